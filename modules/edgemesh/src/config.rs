//! Settings of edgemesh.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::breaker::BreakerPolicy;
use crate::error::Error;
use crate::lb::Strategy;

/// Settings of edgemesh (`modules.edgeMesh:` in edgecore's config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EdgeMeshConfig {
    /// Whether edgecore runs edgemesh.
    pub enable: bool,
    /// metamanager's socket, where Services and Endpoints are read; empty in edgecore means
    /// its own metaManager's socket.
    pub socket_path: PathBuf,
    /// Threads serving intercepted connections; 0 for one per core.
    pub workers: usize,
    /// Where intercepted connections arrive. It must take traffic redirected from other
    /// interfaces too (PREROUTING), so by default it listens on every address; connections
    /// that were not redirected to a Service are closed.
    pub listen: String,
    /// Install iptables rules that send every Service's ClusterIP:port to `listen`.
    pub iptables: bool,
    /// Milliseconds between checks that the rules are still in place.
    pub iptables_sync_ms: u64,
    /// Balancing when a Service has no `edgemesh.io/lb-strategy` annotation.
    pub lb_strategy: Strategy,
    /// Milliseconds a connection to an endpoint may take.
    pub connect_timeout_ms: u64,
    /// Milliseconds a proxied connection may carry nothing either way before it is closed.
    pub idle_timeout_ms: u64,
    /// Milliseconds to wait for a client's first bytes to tell its protocol; a client
    /// silent that long is taken to wait for the server (MySQL, SMTP...) and relayed as is.
    pub sniff_timeout_ms: u64,
    /// The largest HTTP request (or response) head accepted, in bytes; a larger request is
    /// answered 431 (HAProxy's default is 16 KiB, nginx's 8–16 KiB).
    pub max_head_bytes: usize,
    /// Milliseconds a client may take to finish a request head it has started; then it is
    /// answered 408 and closed (slowloris).
    pub head_timeout_ms: u64,
    /// Idle upstream HTTP/1 connections kept per endpoint by each worker thread, shared by
    /// all its clients; 0 closes each after its request.
    pub max_idle_per_endpoint: usize,
    /// Milliseconds an upstream connection is kept idle before it is closed. A connection
    /// the endpoint closed first is noticed before reuse, and the request is sent again.
    pub upstream_idle_timeout_ms: u64,
    /// Requests (HTTP) or connections (TCP) per second this node's endpoints of a Service
    /// accept when it has no `edgemesh.io/qps` annotation; 0 for unlimited.
    pub qps: u32,
    /// Circuit breaking when a Service has no `edgemesh.io/circuit-breaker` annotation.
    pub circuit_breaker: BreakerPolicy,
    /// The explicit proxy (HTTP CONNECT, absolute-URI HTTP, SOCKS5) for apps iptables does
    /// not cover and for use without root; empty turns it off.
    pub proxy_listen: String,
    /// The namespace of the apps on this node: a bare Service name (`web`) is looked up
    /// here.
    pub namespace: String,
    /// The cluster's DNS domain.
    pub cluster_domain: String,
    /// The Service DNS server.
    pub dns: DnsConfig,
    /// UDP Services.
    pub udp: UdpConfig,
    /// Milliseconds a shutdown (SIGTERM) waits for open connections to finish, counted from
    /// the signal: readiness turns false, the iptables rules stop redirecting here, the
    /// listeners close, and what is still open at the deadline is cut; 0 cuts at once.
    /// Beehive's `gracePeriodMs` must be longer.
    pub drain_timeout_ms: u64,
    /// Streams over the cloud link to endpoints on other nodes and in the cloud.
    pub tunnel: TunnelConfig,
    /// Where Services and Endpoints are read: `socket` (metamanager's socket, `socketPath`)
    /// or `kubernetes` (list and watch of a Kubernetes-style API, `kubernetes:`).
    pub source: Source,
    /// The Kubernetes-style API read when `source` is `kubernetes`. There is no tunnel then
    /// (`tunnel` is ignored): see `remoteEndpoints`.
    pub kubernetes: KubernetesConfig,
}

/// Where Services and Endpoints are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// metamanager's socket (`socketPath`): Services and Endpoints the cloud sent this node.
    #[default]
    Socket,
    /// List and watch of Services and EndpointSlices on a Kubernetes-style API: a KubeEdge
    /// edge's metaServer, or a kube-apiserver.
    Kubernetes,
}

/// The Kubernetes-style API of `source: kubernetes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesConfig {
    /// kubeconfig file (server and credentials, as for kubectl). Empty with `server` empty
    /// too: the in-cluster service account, then `$KUBECONFIG`, then `~/.kube/config`.
    pub kubeconfig: PathBuf,
    /// The API's URL, such as KubeEdge's metaServer `http://127.0.0.1:10550` (no
    /// credentials needed); with `kubeconfig` it replaces the kubeconfig's server.
    pub server: String,
    /// This node's name as EndpointSlices record it (`nodeName` of an endpoint), which tells
    /// this node's endpoints from others'; empty means the process's own node name.
    pub node_name: String,
    /// What to do with endpoints on other nodes (there is no tunnel in this mode).
    pub remote_endpoints: RemoteEndpoints,
}

/// How endpoints on other nodes are reached when there is no tunnel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RemoteEndpoints {
    /// Dialled directly at their pod IP, as kube-proxy and KubeEdge's in-tree edgemesh do:
    /// the pod network must route between nodes.
    #[default]
    Direct,
    /// Not used: a Service with only remote endpoints is answered 503 naming the node.
    Refuse,
}

/// Settings of the tunnel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TunnelConfig {
    /// Reach endpoints elsewhere through the cloud link (and accept streams for this
    /// node's endpoints); off, only this node's endpoints are used.
    pub enable: bool,
    /// Bytes a stream's sender may have in flight before its reader takes them (its
    /// credit); what any hop buffers per stream is at most this.
    pub window_bytes: u32,
    /// Streams open at once through this node's link, both ways.
    pub max_streams: usize,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            enable: true,
            window_bytes: proto::stream::DEFAULT_WINDOW,
            max_streams: 4096,
        }
    }
}

/// Settings of the Service DNS server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsConfig {
    /// Where to answer, over UDP and TCP; empty turns the server off. Point the apps'
    /// resolv.conf here yourself: the host's is never rewritten.
    pub listen: String,
    /// Servers (IP or IP:port) that names outside the cluster are forwarded to; empty
    /// means the nameservers of /etc/resolv.conf.
    pub upstreams: Vec<String>,
    /// Forwarded answers kept, at most (for their TTL).
    pub cache_size: usize,
    /// Milliseconds to wait for an upstream server.
    pub upstream_timeout_ms: u64,
}

/// Settings of UDP Services.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct UdpConfig {
    /// Balance the UDP ports of Services: intercepted (with `iptables`), and through the
    /// explicit proxy's SOCKS5 UDP ASSOCIATE.
    pub enable: bool,
    /// Milliseconds a flow (client address and Service port) keeps its endpoint without a
    /// datagram either way; a Service may set its own (`edgemesh.io/udp-idle-timeout`).
    pub idle_timeout_ms: u64,
    /// Flows at once, at most, over every Service: each holds a socket towards its
    /// endpoint. Datagrams that would start another are dropped, with one warning.
    pub max_flows: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            enable: true,
            idle_timeout_ms: 30_000,
            max_flows: 10_000,
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: String::new(),
            upstreams: Vec::new(),
            cache_size: 1024,
            upstream_timeout_ms: 2_000,
        }
    }
}

impl Default for EdgeMeshConfig {
    fn default() -> Self {
        EdgeMeshConfig {
            enable: true,
            socket_path: PathBuf::new(),
            workers: 0,
            listen: "0.0.0.0:40001".into(),
            iptables: true,
            iptables_sync_ms: 5_000,
            lb_strategy: Strategy::RoundRobin,
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 600_000,
            sniff_timeout_ms: 200,
            max_head_bytes: 16 * 1024,
            head_timeout_ms: 10_000,
            max_idle_per_endpoint: 64,
            upstream_idle_timeout_ms: 30_000,
            qps: 0,
            circuit_breaker: BreakerPolicy::default(),
            proxy_listen: "127.0.0.1:40008".into(),
            namespace: "default".into(),
            cluster_domain: "cluster.local".into(),
            dns: DnsConfig::default(),
            udp: UdpConfig::default(),
            drain_timeout_ms: 10_000,
            tunnel: TunnelConfig::default(),
            source: Source::Socket,
            kubernetes: KubernetesConfig::default(),
        }
    }
}

impl EdgeMeshConfig {
    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<(), Error> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every field out of range, each named.
    pub fn problems(&self) -> Vec<Error> {
        let mut problems = Vec::new();
        let mut bad = |field, reason: &str| {
            problems.push(Error::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            bad("listen", "must be IP:port, such as 0.0.0.0:40001");
        }
        if self.workers > 256 {
            bad("workers", "must be at most 256 (0 for one per core)");
        }
        if !(100..=3_600_000).contains(&self.iptables_sync_ms) {
            bad("iptablesSyncMs", "must be between 100 and 3600000");
        }
        if !(1..=600_000).contains(&self.connect_timeout_ms) {
            bad("connectTimeoutMs", "must be between 1 and 600000");
        }
        if !(1_000..=86_400_000).contains(&self.idle_timeout_ms) {
            bad("idleTimeoutMs", "must be between 1000 and 86400000");
        }
        if !(1..=60_000).contains(&self.sniff_timeout_ms) {
            bad("sniffTimeoutMs", "must be between 1 and 60000");
        }
        if !(1024..=1024 * 1024).contains(&self.max_head_bytes) {
            bad("maxHeadBytes", "must be between 1024 and 1048576");
        }
        if !(100..=600_000).contains(&self.head_timeout_ms) {
            bad("headTimeoutMs", "must be between 100 and 600000");
        }
        if self.max_idle_per_endpoint > 10_000 {
            bad("maxIdlePerEndpoint", "must be at most 10000");
        }
        if !(100..=3_600_000).contains(&self.upstream_idle_timeout_ms) {
            bad("upstreamIdleTimeoutMs", "must be between 100 and 3600000");
        }
        if self.drain_timeout_ms > 600_000 {
            bad("drainTimeoutMs", "must be at most 600000 (0 cuts at once)");
        }
        if let Some(reason) = self.circuit_breaker.problem() {
            bad("circuitBreaker", reason);
        }
        if !self.proxy_listen.is_empty()
            && self.proxy_listen.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "proxyListen",
                "must be IP:port, such as 127.0.0.1:40008, or empty",
            );
        }
        if !is_dns_name(&self.namespace) || self.namespace.contains('.') {
            bad("namespace", "must be a Kubernetes namespace name");
        }
        if !is_dns_name(&self.cluster_domain) {
            bad("clusterDomain", "must be a DNS name, such as cluster.local");
        }
        if !(16 * 1024..=proto::stream::MAX_WINDOW).contains(&self.tunnel.window_bytes) {
            bad("tunnel.windowBytes", "must be between 16384 and 2147483647");
        }
        if !(1..=1_000_000).contains(&self.tunnel.max_streams) {
            bad("tunnel.maxStreams", "must be between 1 and 1000000");
        }
        if self.source == Source::Kubernetes {
            let server = &self.kubernetes.server;
            let url = server.starts_with("http://") || server.starts_with("https://");
            if !server.is_empty() && !url {
                bad(
                    "kubernetes.server",
                    "must be an http:// or https:// URL, such as http://127.0.0.1:10550, or empty",
                );
            }
        }
        let dns = &self.dns;
        if !dns.listen.is_empty() && dns.listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "dns.listen",
                "must be IP:port, such as 169.254.96.16:53, or empty",
            );
        }
        if dns
            .upstreams
            .iter()
            .any(|u| crate::dns::upstream_addr(u).is_none())
        {
            bad("dns.upstreams", "each must be IP or IP:port");
        }
        if !(1..=1_000_000).contains(&dns.cache_size) {
            bad("dns.cacheSize", "must be between 1 and 1000000");
        }
        if !(1..=60_000).contains(&dns.upstream_timeout_ms) {
            bad("dns.upstreamTimeoutMs", "must be between 1 and 60000");
        }
        if !(100..=86_400_000).contains(&self.udp.idle_timeout_ms) {
            bad("udp.idleTimeoutMs", "must be between 100 and 86400000");
        }
        if !(1..=1_000_000).contains(&self.udp.max_flows) {
            bad("udp.maxFlows", "must be between 1 and 1000000");
        }
        problems
    }
}

/// Lowercase letters, digits, '-' and '.', not empty, no empty label.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}
