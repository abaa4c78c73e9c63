//! Follows metamanager's watch of Services and Endpoints and swaps a new [`Catalog`] in
//! after changes (a burst gathered into few builds, see [`crate::rebuild`]), once both
//! initial lists are complete. Each object is parsed once, as it
//! arrives, into the compact form the catalog reads ([`crate::objects`]); its JSON tree is
//! dropped there.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use proto::ResourceType;
use proto::metaclient::{Watch, WatchEvent};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, Defaults, Kept};
use crate::objects::{Endpoints, Service};
use crate::rebuild::{self, Rebuild};

/// One watched kind, held parsed.
pub(crate) struct Side<T> {
    pub(crate) objects: BTreeMap<String, T>,
    /// Objects of a list in progress (a restarted watch): made the map at its end, in one
    /// bulk build. Inserting sorted keys one by one leaves every B-tree node half empty
    /// (the map of 1,000 Services would take twice the room).
    listing: Option<Vec<(String, T)>>,
    pub(crate) synced: bool,
    /// The parts of an object the catalog reads; `None` for one it would skip.
    parse: fn(&Value) -> Option<T>,
}

impl<T> Side<T> {
    pub(crate) fn new(parse: fn(&Value) -> Option<T>) -> Self {
        Side {
            objects: BTreeMap::new(),
            listing: None,
            synced: false,
            parse,
        }
    }

    /// Applies one event; true when the current view changed.
    pub(crate) fn apply(&mut self, event: WatchEvent) -> bool {
        match event {
            WatchEvent::Init => {
                self.listing = Some(Vec::new());
                false
            }
            WatchEvent::InitApply(key, value) => {
                if let Some(object) = (self.parse)(&value) {
                    self.listing.get_or_insert_default().push((key, object));
                }
                false
            }
            WatchEvent::InitDone => {
                // A list names each key once, so no entry is lost to deduplication.
                self.objects = self
                    .listing
                    .take()
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                self.synced = true;
                true
            }
            WatchEvent::Apply(key, value) => {
                match (self.parse)(&value) {
                    Some(object) => self.objects.insert(key, object),
                    // Say a Service that lost its ClusterIP: what was kept of it goes.
                    None => self.objects.remove(&key),
                };
                self.synced
            }
            WatchEvent::Delete(key, _) => {
                self.objects.remove(&key);
                self.synced
            }
        }
    }
}

/// Keeps `catalog` current until `stop`; `generation` counts the catalogs swapped in (the
/// first one marks the initial sync).
pub async fn follow(
    socket: PathBuf,
    catalog: Arc<ArcSwap<Catalog>>,
    defaults: Defaults,
    kept: Arc<Kept>,
    generation: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut services = Side::new(Service::parse);
    let mut endpoints = Side::new(|v| Some(Endpoints::parse(v)));
    let mut svc_watch = Watch::new(&socket, None, ResourceType::Service);
    let mut ep_watch = Watch::new(&socket, None, ResourceType::Endpoints);
    let mut rebuild = Rebuild::default();
    loop {
        let changed = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            // Before taking more: a burst that never pauses still gets its catalog.
            _ = std::future::ready(()), if rebuild.overdue() => None,
            event = svc_watch.next() => Some(services.apply(event)),
            event = ep_watch.next() => Some(endpoints.apply(event)),
            _ = rebuild::ready(rebuild.due()) => None,
        };
        let Some(changed) = changed else {
            let next = Catalog::build(&services.objects, &endpoints.objects, &defaults, &kept);
            rebuild::publish(&catalog, &generation, next);
            rebuild.built();
            continue;
        };
        if changed && services.synced && endpoints.synced {
            rebuild.mark();
        }
    }
}
