//! The iptables rules that hand every Service's ClusterIP:port to the listener (TCP) or to
//! the socket of that Service port (UDP, see `udp`): a nat chain
//! of ours (`EDGE-MESH`) jumped to from OUTPUT (this host's own connections) and PREROUTING
//! (connections from pods and containers behind any bridge). The chain is replaced in one
//! `iptables-restore --noflush` batch per change, checked periodically and repaired when
//! something removed it, and removed on clean exit.

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::{Error, Result};

/// The chain's name.
pub const CHAIN: &str = "EDGE-MESH";
const HOOKS: [&str; 2] = ["OUTPUT", "PREROUTING"];

/// What the chain redirects where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redirects {
    /// TCP Service ports, all to the listener's port.
    pub tcp: Vec<SocketAddr>,
    /// The listener's port.
    pub port: u16,
    /// UDP Service ports, each to its own socket's port.
    pub udp: Vec<(SocketAddr, u16)>,
}

impl Redirects {
    /// The rules the chain holds for these (IPv4 only).
    pub fn rules(&self) -> usize {
        self.tcp.iter().filter(|v| v.is_ipv4()).count()
            + self.udp.iter().filter(|(v, _)| v.is_ipv4()).count()
    }
}

/// The `iptables-restore` input that makes the chain redirect every TCP vip to the
/// listener and every UDP vip to its socket.
pub fn render(to: &Redirects) -> String {
    let mut text = format!("*nat\n:{CHAIN} - [0:0]\n");
    for vip in to.tcp.iter().filter(|v| v.is_ipv4()) {
        text.push_str(&format!(
            "-A {CHAIN} -d {}/32 -p tcp -m tcp --dport {} -j REDIRECT --to-ports {}\n",
            vip.ip(),
            vip.port(),
            to.port
        ));
    }
    for (vip, port) in to.udp.iter().filter(|(v, _)| v.is_ipv4()) {
        text.push_str(&format!(
            "-A {CHAIN} -d {}/32 -p udp -m udp --dport {} -j REDIRECT --to-ports {port}\n",
            vip.ip(),
            vip.port()
        ));
    }
    text.push_str("COMMIT\n");
    text
}

async fn run(args: &[&str]) -> Result<String> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .await
        .map_err(|e| Error::Iptables(format!("cannot run iptables: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Iptables(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Installs the chain for `to` and the jumps to it.
pub async fn apply(to: &Redirects) -> Result<()> {
    let mut child = Command::new("iptables-restore")
        .args(["-w", "5", "--noflush"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Iptables(format!("cannot run iptables-restore: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(render(to).as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        return Err(Error::Iptables(format!(
            "iptables-restore: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    for hook in HOOKS {
        if run(&["-t", "nat", "-C", hook, "-j", CHAIN]).await.is_err() {
            run(&["-t", "nat", "-I", hook, "1", "-j", CHAIN]).await?;
        }
    }
    Ok(())
}

/// True when the chain holds `expected` rules and both jumps are there.
pub async fn in_place(expected: usize) -> bool {
    let Ok(listing) = run(&["-t", "nat", "-S", CHAIN]).await else {
        return false;
    };
    let rules = listing.lines().filter(|l| l.starts_with("-A ")).count();
    if rules != expected {
        return false;
    }
    for hook in HOOKS {
        if run(&["-t", "nat", "-C", hook, "-j", CHAIN]).await.is_err() {
            return false;
        }
    }
    true
}

/// Removes the jumps to the chain: no new connection is redirected, while those already
/// redirected keep their address translation. Deleting the chain's own REDIRECT rules
/// would not: with them goes the last user of connection tracking in a namespace that has
/// no other NAT rule, the kernel stops tracking (and translating) the connections already
/// made, and their packets go astray (checked with iptables-nft 1.8.9). So the chain stays
/// until [`remove`], once they are closed.
pub async fn unhook() -> Result<()> {
    for hook in HOOKS {
        while run(&["-t", "nat", "-D", hook, "-j", CHAIN]).await.is_ok() {}
    }
    Ok(())
}

/// Removes the jumps and the chain.
pub async fn remove() -> Result<()> {
    unhook().await?;
    if run(&["-t", "nat", "-S", CHAIN]).await.is_ok() {
        run(&["-t", "nat", "-F", CHAIN]).await?;
        run(&["-t", "nat", "-X", CHAIN]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_redirect_each_ipv4_vip_to_the_listener() {
        let to = Redirects {
            tcp: vec![
                "10.96.0.10:80".parse().unwrap(),
                "[fd00::1]:80".parse().unwrap(),
            ],
            port: 40001,
            udp: vec![("10.96.0.53:53".parse().unwrap(), 41234)],
        };
        let text = render(&to);
        assert_eq!(
            text,
            "*nat\n:EDGE-MESH - [0:0]\n\
             -A EDGE-MESH -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 40001\n\
             -A EDGE-MESH -d 10.96.0.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 41234\n\
             COMMIT\n"
        );
        assert_eq!(to.rules(), 2);
    }
}
