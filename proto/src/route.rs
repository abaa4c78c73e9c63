//! Where a message goes: `route.source`, `route.group`, `route.operation`, `route.resource`.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// Operations (`route.operation`) shared with KubeEdge.
pub mod operation {
    /// Create an object.
    pub const INSERT: &str = "insert";
    /// Change an object.
    pub const UPDATE: &str = "update";
    /// Remove an object.
    pub const DELETE: &str = "delete";
    /// Ask for an object or a list.
    pub const QUERY: &str = "query";
    /// A successful reply (also the ACK of a delivered object, content `"OK"`).
    pub const RESPONSE: &str = "response";
    /// A failed reply; the content is the reason.
    pub const ERROR: &str = "error";
    /// The link's liveness ping.
    pub const KEEPALIVE: &str = "keepalive";
    /// A cloud link state change, published by edgehub to every group (KubeEdge's name).
    pub const CONNECT: &str = "connect";
    /// Ours, edge → cloud when the link comes up: what the edge holds, as a JSON object
    /// `{"<ns>/<type>/<name>": "<resourceVersion>", ...}`. The cloud answers with the inserts,
    /// updates and deletes that make the edge hold exactly what it should.
    pub const RESYNC: &str = "resync";
    /// Ours, cloudhub → edgecontroller right after a node's `node_connected`: what the
    /// node was sent and may hold, per cloudhub's record (KubeEdge's ObjectSync), as the
    /// same `{"<ns>/<type>/<name>": "<resourceVersion>"}` map (`""`: version unknown). Sent
    /// only for nodes the record knows; resource `node/<nodeID>`.
    pub const SYNCED: &str = "synced";
}

/// The cloud link state change edgehub publishes, as KubeEdge shapes it: resource
/// [`connection::RESOURCE`], operation [`operation::CONNECT`], content [`connection::CONNECTED`]
/// or [`connection::DISCONNECTED`].
pub mod connection {
    /// `route.resource` of the event.
    pub const RESOURCE: &str = "node/connection";
    /// Content when the link came up.
    pub const CONNECTED: &str = "cloud_connected";
    /// Content when the link went down.
    pub const DISCONNECTED: &str = "cloud_disconnected";
    /// Content of cloudhub's event to edgecontroller when a node's link came up; the
    /// resource is `node/<nodeID>` and the operation [`super::operation::CONNECT`].
    pub const NODE_CONNECTED: &str = "node_connected";
    /// Content of cloudhub's event when a node's link went down.
    pub const NODE_DISCONNECTED: &str = "node_disconnected";
    /// Content of the `error` reply edgehub gives at once to a sync request sent up while
    /// the cloud link is down.
    pub const LINK_DOWN: &str = "cloud link is down";
    /// `route.resource` of the edge's keepalive.
    pub const KEEPALIVE_RESOURCE: &str = "node";
    /// Content of the edge's keepalive.
    pub const KEEPALIVE_CONTENT: &str = "ping";
}

/// Headers of the link's WebSocket upgrade.
pub mod handshake {
    /// What the connection carries, which KubeEdge's viaduct server reads before it serves
    /// a connection (`header.Add("ConnectionUse", string(c.options.ConnUse))`,
    /// kubeedge/kubeedge pkg/viaduct/pkg/client/ws.go:44).
    pub const CONNECTION_USE: &str = "ConnectionUse";
    /// Its value for messages (`UseTypeMessage UseType = "msg"`,
    /// pkg/viaduct/pkg/api/type.go:14).
    pub const CONNECTION_USE_MSG: &str = "msg";
    /// Response header our cloudhub adds to the upgrade: the peer reads binary frames
    /// (message frames and tunnel stream frames). A peer that does not send it (KubeEdge's
    /// cloudcore) gets JSON text frames only, and no tunnel streams.
    pub const FRAMES: &str = "edgemesh-frames";
    /// Its value.
    pub const FRAMES_BINARY: &str = "binary";
}

/// metamanager's store state, sent on the edge's bus to the group
/// [`HEALTH_GROUP`](crate::route::store_state::HEALTH_GROUP) whenever it changes (never on
/// the wire): resource [`RESOURCE`](crate::route::store_state::RESOURCE), operation
/// [`UPDATE`](crate::route::operation::UPDATE), content
/// [`WRITABLE`](crate::route::store_state::WRITABLE) or the reason the store cannot commit.
pub mod store_state {
    /// `route.resource` of the event.
    pub const RESOURCE: &str = "node/store";
    /// Content when the store commits.
    pub const WRITABLE: &str = "writable";
    /// The bus group of the module that serves `/readyz`.
    pub const HEALTH_GROUP: &str = "health";
}

/// Wire groups (`route.group`) on the cloud link.
pub mod group {
    /// Metadata; edgehub delivers it to the bus group `meta`.
    pub const RESOURCE: &str = "resource";
    /// Mesh tunnel traffic; edgehub delivers it to the bus group `mesh`.
    pub const MESH: &str = "mesh";
}

/// The route of a message. Fields are small strings kept inline where they fit, so building
/// a message on the bus hot path does not allocate for them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Route {
    /// Module (or peer) that sent the message.
    #[serde(skip_serializing_if = "CompactString::is_empty")]
    pub source: CompactString,
    /// Group the message is meant for.
    #[serde(skip_serializing_if = "CompactString::is_empty")]
    pub group: CompactString,
    /// What to do: see [`operation`].
    #[serde(skip_serializing_if = "CompactString::is_empty")]
    pub operation: CompactString,
    /// What it is about: a resource path such as `default/service/hello`.
    #[serde(skip_serializing_if = "CompactString::is_empty")]
    pub resource: CompactString,
}

impl Route {
    /// A route from its four parts.
    pub fn new(
        source: impl Into<CompactString>,
        group: impl Into<CompactString>,
        operation: impl Into<CompactString>,
        resource: impl Into<CompactString>,
    ) -> Self {
        Route {
            source: source.into(),
            group: group.into(),
            operation: operation.into(),
            resource: resource.into(),
        }
    }
}
