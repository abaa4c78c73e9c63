//! edgecontroller: the cloud's source of edge metadata.
//!
//! It keeps the desired state — Services, Endpoints, Pods and Nodes — from a source, and
//! sends each connected edge node its share through cloudhub: every Service and Endpoints
//! (with each address's node name, so edgemesh tells local from remote), and the Pods
//! scheduled on it. Messages carry `node/<id>/<ns>/<type>/<name>`, the object's version,
//! and `insert`, `update` or `delete`.
//!
//! **Resync.** When a node's link comes up, its metamanager reports what it holds (path →
//! resourceVersion, operation `resync`). The controller answers with exactly the
//! differences: inserts for what is missing, updates for what changed, deletes for what no
//! longer exists. A node away for a day converges in one step and an unchanged node costs
//! nothing. A node that sends no report within `resyncWaitMs` is sent everything. Nothing
//! is queued for absent nodes: the resync on return covers them.
//!
//! **Versions.** The edge gets numeric resourceVersions from one ledger ([`Versions`],
//! `versionsDb`): an object keeps its number while its source version (an API server's
//! resourceVersion, or a content hash for manifest files and derived Endpoints) is
//! unchanged, and gets a larger one when it changes, so a restart of cloudcore resends
//! nothing and KubeEdge's metaServer, which reads versions as integers, can resume watches.
//!
//! **Sources** implement [`Source`]: `manifests` (default) reads a folder of ordinary
//! Kubernetes YAML; `kubernetes` watches an API server with kube-rs (see [`kubernetes`] for
//! why EndpointSlices rather than Endpoints, and how relists stay exact). The RBAC it needs
//! is in `deploy/rbac.yaml`.
//!
//! **Queries** from a node get the object (or list), or an `error` reply — never silence.
//! As Kubernetes' node authorizer decides for a kubelet, a node reads Services, Endpoints
//! and the Pods bound to it: a Pod not bound to it is `forbidden` whether or not it exists
//! (an answer that told the two apart would tell a node what runs elsewhere), a list of
//! Pods holds only its own, and every refusal is logged and counted ([`Refusals`]).

pub mod applications;
pub mod config;
pub mod controller;
pub mod derive;
pub mod error;
pub mod kubernetes;
pub mod manifests;
pub mod node_requests;
pub mod object;
pub mod refusal;
pub mod selector;
pub mod source;
pub mod state;
pub mod versions;

pub use config::{EdgeControllerConfig, KubernetesConfig, ManifestsConfig, SourceKind};
pub use controller::{EdgeController, GROUP, MODULE};
pub use error::{Error, Result};
pub use refusal::Refusals;
pub use source::{Source, SourceEvent};
pub use versions::Versions;
