//! Forgetting the connection tracking of a UDP Service port whose redirect changed.
//!
//! Conntrack remembers a UDP "connection" (client address → ClusterIP:port) with the
//! translation its first datagram got, for as long as datagrams keep coming (30 s after
//! the last one, 120 s once answered). When edgemesh restarts, each UDP Service port gets a
//! new socket on a new port, but a client that keeps sending from the same address (a
//! syslog or metrics agent) would go on being sent to the old, closed port for as long as
//! it keeps sending. Deleting those entries when a redirect is (re)installed makes the
//! next datagram take the new rule, as kube-proxy does for UDP.

use std::net::SocketAddr;

use tokio::process::Command;

/// Deletes the conntrack entries of UDP datagrams to `vip`. `Err` when the `conntrack`
/// tool is missing or fails (not when there was nothing to delete).
pub async fn forget_udp(vip: SocketAddr) -> Result<(), String> {
    let out = Command::new("conntrack")
        .args(["-D", "-p", "udp", "--orig-dst"])
        .arg(vip.ip().to_string())
        .arg("--orig-port-dst")
        .arg(vip.port().to_string())
        .output()
        .await
        .map_err(|e| format!("cannot run conntrack: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It exits 1 when no entry matched.
    if out.status.success() || stderr.contains("0 flow entries") {
        Ok(())
    } else {
        Err(format!("conntrack -D for {vip}: {}", stderr.trim()))
    }
}
