//! What every source of objects (a manifest folder, the Kubernetes API) gives the
//! controller.

use beehive::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::object::{Kind, ObjKey, Object};

/// A change in what the source holds.
#[derive(Debug)]
pub enum SourceEvent {
    /// The complete current set of one kind (a first list, a relist, a rescan): the
    /// controller works out what changed.
    Replace(Kind, Vec<Object>),
    /// One object created or changed.
    Apply(Object),
    /// One object removed.
    Delete(ObjKey),
}

/// A source of Services, Endpoints, Pods and Nodes.
#[async_trait]
pub trait Source: Send + 'static {
    /// What to call it in logs.
    fn name(&self) -> &'static str;
    /// Feeds `events` until `stop` is cancelled or the controller goes away.
    async fn run(self: Box<Self>, events: mpsc::Sender<SourceEvent>, stop: CancellationToken);
}
