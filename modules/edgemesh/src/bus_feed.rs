//! The metadata feed of a mesh that runs beside edgecontroller (in cloudcore): Services
//! and Endpoints arrive as bus messages (`insert`/`update`/`delete` of
//! `<ns>/service/<name>` and `<ns>/endpoints/<name>`) instead of over metamanager's socket,
//! and feed the same [`Catalog`].

use proto::metaclient::WatchEvent;
use proto::{Message, ResourcePath, ResourceType, operation};

use crate::catalog::{Catalog, Defaults, Kept};
use crate::follow::Side;
use crate::objects::{Endpoints, Service};

/// Services and Endpoints as edgecontroller sends them.
pub struct BusFeed {
    services: Side<Service>,
    endpoints: Side<Endpoints>,
}

impl Default for BusFeed {
    fn default() -> Self {
        let mut services = Side::new(Service::parse);
        let mut endpoints = Side::new(|v| Some(Endpoints::parse(v)));
        // Every change comes as it happens, from the first: there is no list to wait for.
        services.synced = true;
        endpoints.synced = true;
        BusFeed {
            services,
            endpoints,
        }
    }
}

impl BusFeed {
    /// Applies one message; true when the catalog must be rebuilt.
    pub fn apply(&mut self, msg: Message) -> bool {
        let Ok(path) = ResourcePath::parse_edge(msg.resource()) else {
            return false;
        };
        if path.name.is_none() {
            return false;
        }
        let key = msg.resource().to_owned();
        let Some(value) = msg.content.into_json() else {
            return false;
        };
        let event = match msg.route.operation.as_str() {
            operation::INSERT | operation::UPDATE => WatchEvent::Apply(key, value),
            operation::DELETE => WatchEvent::Delete(key, value),
            _ => return false,
        };
        match path.kind {
            ResourceType::Service => self.services.apply(event),
            ResourceType::Endpoints => self.endpoints.apply(event),
            _ => false,
        }
    }

    /// The catalog of what it holds.
    pub fn catalog(&self, defaults: &Defaults, kept: &Kept) -> Catalog {
        Catalog::build(
            &self.services.objects,
            &self.endpoints.objects,
            defaults,
            kept,
        )
    }
}
