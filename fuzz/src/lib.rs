//! What several fuzz targets share: a small catalog of Services, built the way edgemesh
//! builds it from metamanager's objects, and a runtime to drive async parsers on.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use edgemesh_module::catalog::{Catalog, Defaults, Kept};
use edgemesh_module::drain::Drain;
use edgemesh_module::metrics::Metrics;
use edgemesh_module::names::Names;
use edgemesh_module::objects::{Endpoints, Service};
use edgemesh_module::shared::{Limits, Shared};
use edgemesh_module::upstream::{H2, Pool, Upstream};
use serde_json::json;

/// The cluster's names: bare names are in `shop`, the domain is `cluster.local`.
pub fn names() -> Names {
    Names {
        namespace: "shop".into(),
        domain: "cluster.local".into(),
    }
}

/// Services `shop/web` (10.96.0.10, ports 80 "http" and 443) and `default/redis`
/// (10.96.0.11:6379), with an endpoint each, and `default/v6` on an IPv6 ClusterIP.
pub fn catalog() -> Arc<ArcSwap<Catalog>> {
    let service = |ns: &str, name: &str, ip: &str, ports: serde_json::Value| {
        json!({
            "kind": "Service",
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip, "ports": ports},
        })
    };
    let services: BTreeMap<String, Service> = [
        service(
            "shop",
            "web",
            "10.96.0.10",
            json!([{"name": "http", "port": 80}, {"port": 443}]),
        ),
        service("default", "redis", "10.96.0.11", json!([{"port": 6379}])),
        service("default", "v6", "fd00::10", json!([{"port": 80}])),
    ]
    .iter()
    .filter_map(Service::parse)
    .map(|s| (format!("{}/service/{}", s.namespace, s.name), s))
    .collect();
    let endpoints: BTreeMap<String, Endpoints> = [
        ("shop/endpoints/web", "10.0.0.5", 8080),
        ("default/endpoints/redis", "10.0.0.6", 6379),
    ]
    .into_iter()
    .map(|(key, ip, port)| {
        let e = json!({"subsets": [{"addresses": [{"ip": ip}], "ports": [{"port": port}]}]});
        (key.to_owned(), Endpoints::parse(&e))
    })
    .collect();
    let catalog = Catalog::build(
        &services,
        &endpoints,
        &Defaults::default(),
        &Kept::default(),
    );
    assert_eq!(
        catalog.vips().len(),
        4,
        "the fixture's Services are catalogued"
    );
    Arc::new(ArcSwap::from_pointee(catalog))
}

/// What a proxy connection needs, over [`catalog`] and [`names`]; nothing is dialled.
pub fn shared() -> Shared {
    Shared {
        catalog: catalog(),
        upstream: Upstream::new(
            "edge-1",
            Duration::from_secs(1),
            Pool::new(4, Duration::from_secs(60)),
            H2::new(Duration::from_secs(60)),
        ),
        udp: None,
        limits: Limits {
            max_head: 16 * 1024,
            head_timeout: Duration::from_secs(1),
        },
        idle_timeout: Duration::from_secs(60),
        sniff_timeout: Duration::from_millis(100),
        unknown: Metrics::default().service("unknown"),
        names: names(),
        drain: Drain::new(),
    }
}

/// A single-threaded runtime, made once per process: the parsers under test read from
/// memory, so a future never waits on anything but itself.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}
