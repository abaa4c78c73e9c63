//! Node identity end to end, with the real binaries: `cloudcore token create`, `edgecore
//! join` against cloudcore's PKI port, then `edgecore --config` over TLS with the
//! certificate it got; tokens that are for another CA, expired, revoked or tampered with
//! are refused with the reason; a revoked certificate is refused at the next connection;
//! every refusal counted on cloudcore's /metrics.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::mesh::{get, sample};
use common::three::{Proc, service, write_manifests};
use common::{eventually, sqlite_rows};
use edgemesh::edgecore::EdgeCoreConfig;

const CLOUDCORE: &str = env!("CARGO_BIN_EXE_cloudcore");
const EDGECORE: &str = env!("CARGO_BIN_EXE_edgecore");

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(out: Output) -> String {
    assert!(!out.status.success(), "should have been refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct Bed {
    dir: tempfile::TempDir,
    config: PathBuf,
    cloud: Proc,
    hub: String,
    pki: String,
    health: std::net::SocketAddr,
}

impl Bed {
    async fn start() -> Bed {
        Self::with_cert_life(3600).await
    }

    async fn with_cert_life(seconds: u64) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        write_manifests(
            &manifests,
            &[service("web", "10.96.0.10", 80, serde_json::json!({}))],
        );
        let config = dir.path().join("cloud.yaml");
        std::fs::write(
            &config,
            format!(
                "health: {{address: \"127.0.0.1:0\"}}\n\
                 pki: {{dir: \"{}\", address: \"127.0.0.1:0\", serverNames: [localhost, 127.0.0.1], \
                 nodeCertSeconds: {seconds}}}\n\
                 modules:\n  cloudHub: {{address: \"127.0.0.1:0\", objectSyncDb: \"{}\"}}\n  \
                 edgeController: {{source: manifests, manifests: {{dir: \"{}\", pollIntervalMs: 100}}, \
                 versionsDb: \"{}\"}}\n  \
                 edgeMesh: {{enable: false}}\n",
                dir.path().join("pki").display(),
                dir.path().join("object-sync.db").display(),
                manifests.display(),
                dir.path().join("versions.db").display()
            ),
        )
        .unwrap();
        let cloud = Proc::start(CLOUDCORE, &config, dir.path().join("cloud.log"));
        let hub = cloud
            .logged_addr("cloudhub listening on ")
            .await
            .to_string();
        let pki = cloud
            .logged_addr("PKI serving /ca.crt and /edge.crt on https://")
            .await
            .to_string();
        let health = cloud.logged_addr("/metrics on http://").await;
        Bed {
            dir,
            config,
            cloud,
            hub,
            pki,
            health,
        }
    }

    fn token(&self, ttl: &str) -> String {
        let config = self.config.to_str().unwrap();
        ok(run(
            CLOUDCORE,
            &["token", "create", "--config", config, "--ttl", ttl],
        ))
        .trim()
        .to_owned()
    }

    /// `edgecore join` for `node` into its own folder; the config path.
    fn join(&self, node: &str, token: &str) -> Output {
        let dir = self.dir.path().join(node);
        let out = dir.join("edgecore.yaml");
        run(
            EDGECORE,
            &[
                "join",
                "--cloud",
                &self.hub,
                "--pki",
                &self.pki,
                "--token",
                token,
                "--node",
                node,
                "--dir",
                dir.to_str().unwrap(),
                "--config-out",
                out.to_str().unwrap(),
            ],
        )
    }

    /// The joined config of `node`, with only what a shared test machine needs changed:
    /// ports, no iptables. The TLS settings are join's.
    fn runnable(&self, node: &str) -> PathBuf {
        self.runnable_with(node, |_| {})
    }

    fn runnable_with(&self, node: &str, tune: impl FnOnce(&mut EdgeCoreConfig)) -> PathBuf {
        let path = self.dir.path().join(node).join("edgecore.yaml");
        let mut config = EdgeCoreConfig::load(&path).unwrap();
        tune(&mut config);
        config.health.address = "127.0.0.1:0".into();
        config.modules.edge_mesh.enable = false;
        let out = self.dir.path().join(node).join("test.yaml");
        std::fs::write(&out, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
        out
    }

    async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = get(self.health, "/metrics").await.unwrap();
        sample(&text, series)
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_with_a_token_and_connects_over_tls() {
    let bed = Bed::start().await;
    let token = bed.token("1h");
    assert_eq!(token.split('.').count(), 4, "{token}");
    let said = ok(bed.join("edge-1", &token));
    assert!(said.contains("node edge-1 joined"), "{said}");
    let pki = bed.dir.path().join("edge-1").join("pki");
    assert_eq!(
        mode(&pki.join("node.pem")),
        0o600,
        "certificate and key, private"
    );
    assert_eq!(mode(&bed.dir.path().join("pki").join("ca.key")), 0o600);
    assert_eq!(mode(&bed.dir.path().join("pki").join("token.key")), 0o600);

    let config = bed.runnable("edge-1");
    let joined = EdgeCoreConfig::load(&config).unwrap();
    assert!(joined.modules.edge_hub.tls.is_some(), "TLS from join");
    let edge = Proc::start(EDGECORE, &config, bed.dir.path().join("edge-1.log"));
    let db = joined.modules.meta_manager.db_path.clone();
    eventually("the Service over wss", || {
        let db = db.clone();
        async move {
            db.exists()
                && sqlite_rows(&db)
                    .iter()
                    .any(|(k, _)| k == "default/service/web")
        }
    })
    .await;
    assert!(
        bed.cloud
            .text()
            .contains("PKI: node edge-1 joins with token")
    );
    // The edge's /metrics carries metamanager's socket refusals (none here).
    let edge_health = edge.logged_addr("/metrics on http://").await;
    let (_, text) = get(edge_health, "/metrics").await.unwrap();
    assert_eq!(
        sample(&text, "metamanager_socket_refused_peers_total"),
        Some(0.0),
        "{text}"
    );
    let listed = ok(run(
        CLOUDCORE,
        &["cert", "list", "--config", bed.config.to_str().unwrap()],
    ));
    assert!(
        listed.contains("edge-1") && listed.contains("valid"),
        "{listed}"
    );

    // Revoked while connected: the live session is cut at once (within cloudhub's check
    // interval), the next connection refused, each logged and counted.
    ok(run(
        CLOUDCORE,
        &[
            "cert",
            "revoke",
            "--config",
            bed.config.to_str().unwrap(),
            "--node",
            "edge-1",
        ],
    ));
    eventually("the live session cut", || {
        let (cloud, edge) = (bed.cloud.text(), edge.text());
        async move {
            cloud.contains("node edge-1: session cut: certificate") && edge.contains("was revoked")
        }
    })
    .await;
    eventually("its reconnections refused too, each counted", || async {
        bed.metric(r#"cloudhub_refusals_total{reason="revoked"}"#)
            .await
            .is_some_and(|n| n >= 2.0)
    })
    .await;
    drop(edge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_the_reason_and_nothing_is_written() {
    let bed = Bed::start().await;
    let good = bed.token("1h");

    // Another CA's hash: the edge refuses to trust what answered.
    let other_ca = format!("{}{}", "0".repeat(64), &good[64..]);
    let why = refused(bed.join("edge-a", &other_ca));
    assert!(why.contains("CA hash mismatch"), "{why}");
    assert!(!bed.dir.path().join("edge-a/pki/node.pem").exists());

    // Expired.
    let expired = bed.token("0s");
    let why = refused(bed.join("edge-b", &expired));
    assert!(why.contains("expired"), "{why}");

    // Tampered: a character of the signature changed.
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let why = refused(bed.join("edge-c", &String::from_utf8(tampered).unwrap()));
    assert!(why.contains("signature does not match"), "{why}");

    // Revoked, by its id from `token list`.
    let config = bed.config.to_str().unwrap();
    let revoked = bed.token("1h");
    let listed = ok(run(CLOUDCORE, &["token", "list", "--config", config]));
    let ids: Vec<&str> = listed
        .lines()
        .skip(1)
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{listed}"); // good and revoked: the expired one is not listed
    let payload_of = |t: &str| t.split('.').nth(2).unwrap().to_owned();
    let id = ids
        .iter()
        .find(|id| {
            use base64::Engine;
            let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload_of(&revoked))
                .unwrap();
            String::from_utf8(claims).unwrap().contains(**id)
        })
        .unwrap();
    ok(run(CLOUDCORE, &["token", "revoke", "--config", config, id]));
    let why = refused(bed.join("edge-d", &revoked));
    assert!(why.contains("revoked"), "{why}");

    // The good token still works.
    ok(bed.join("edge-e", &good));
    for (reason, n) in [
        ("token_expired", 1.0),
        ("token_tampered", 1.0),
        ("token_revoked", 1.0),
    ] {
        let series = format!("pki_refusals_total{{reason=\"{reason}\"}}");
        assert_eq!(bed.metric(&series).await, Some(n), "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_traffic_and_no_change_is_lost() {
    // A minute's certificates renewed at 51% of a life that starts a minute back (the
    // allowance for clock skew): a new certificate about every second.
    let bed = Bed::with_cert_life(60).await;
    ok(bed.join("edge-1", &bed.token("1h")));
    let config = bed.runnable_with("edge-1", |c| c.pki.renew_at_percent = 51);
    let edge = Proc::start(EDGECORE, &config, bed.dir.path().join("edge-1.log"));
    let db = EdgeCoreConfig::load(&config)
        .unwrap()
        .modules
        .meta_manager
        .db_path;

    // Services are added in waves, each after another renewal, so changes are in flight
    // while links are switched.
    let manifests = bed.dir.path().join("manifests");
    let renewals = |text: &str| text.matches("certificate renewed").count();
    let mut objects = vec![service("web", "10.96.0.10", 80, serde_json::json!({}))];
    for wave in 0..4u32 {
        let seen = renewals(&edge.text());
        for i in 0..50u32 {
            let n = wave * 50 + i;
            objects.push(service(
                &format!("s{n}"),
                &format!("10.96.{}.{}", 1 + n / 250, n % 250 + 1),
                80,
                serde_json::json!({}),
            ));
        }
        write_manifests(&manifests, &objects);
        eventually("another renewal", || {
            let text = edge.text();
            async move { renewals(&text) > seen }
        })
        .await;
    }
    let want = objects.len();
    eventually("every Service on the edge", || {
        let db = db.clone();
        async move {
            db.exists()
                && sqlite_rows(&db)
                    .iter()
                    .filter(|(k, _)| k.starts_with("default/service/"))
                    .count()
                    == want
        }
    })
    .await;
    let text = edge.text();
    assert!(renewals(&text) >= 4, "{text}");
    assert!(
        text.matches("redialling with the renewed certificate")
            .count()
            >= 4,
        "{text}"
    );
    // Each renewal is a certificate of its own, all recorded by cloudcore.
    let listed = ok(run(
        CLOUDCORE,
        &["cert", "list", "--config", bed.config.to_str().unwrap()],
    ));
    assert!(listed.matches("edge-1").count() >= 5, "{listed}");
    assert!(
        !bed.cloud.text().contains("refused"),
        "{}",
        bed.cloud.text()
    );
    drop(edge);
}
