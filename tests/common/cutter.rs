//! A TCP relay that can cut every connection through it at once, like a link that drops
//! (a mobile uplink, a NAT that forgets): new connections go on being relayed.
#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Relays connections to a target until dropped.
pub struct Cutter {
    /// Where to connect instead of the target.
    pub addr: SocketAddr,
    target: std::sync::Arc<std::sync::Mutex<SocketAddr>>,
    cuts: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Cutter {
    /// Relays 127.0.0.1:port (chosen by the system) to `target`.
    pub async fn start(target: SocketAddr) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cuts, _) = watch::channel(0u64);
        let watching = cuts.clone();
        let target = std::sync::Arc::new(std::sync::Mutex::new(target));
        let current = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cut = watching.subscribe();
                let target = *current.lock().unwrap();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Cutter {
            addr,
            target,
            cuts,
            task,
        }
    }

    /// Relays new connections to `target` from now on (a restarted server's new port).
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    /// Drops every connection open through the relay now.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
