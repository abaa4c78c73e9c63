//! The Message, byte-compatible in JSON with KubeEdge's `model.Message`.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::content::Content;
use crate::error::{Error, Result};
use crate::msg_id::MsgId;
use crate::route::{Route, operation};

/// `header` of a message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Header {
    /// Unique id, a UUID v4 string.
    #[serde(rename = "msg_id")]
    pub id: MsgId,
    /// On replies and ACKs: the id of the message answered.
    #[serde(rename = "parent_msg_id", skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<MsgId>,
    /// Creation time, Unix milliseconds.
    pub timestamp: i64,
    /// Kubernetes resourceVersion of the object carried, if any.
    #[serde(
        rename = "resourceversion",
        skip_serializing_if = "CompactString::is_empty"
    )]
    pub resource_version: CompactString,
    /// True when the sender waits for a reply.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sync: bool,
}

impl Header {
    /// A header with a fresh id and the current time.
    pub fn new() -> Self {
        Header {
            id: MsgId::new_v4(),
            parent_id: None,
            timestamp: now_millis(),
            resource_version: CompactString::const_new(""),
            sync: false,
        }
    }
}

/// A message on the bus and on the cloud link.
///
/// Keys and their order follow KubeEdge's Go struct, so both sides write the same bytes:
/// `header`, `route` and `content` are always present (content `null` when empty), empty
/// optional fields are omitted, unknown keys are ignored on read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Message {
    /// Identity, parentage, time, version, sync flag.
    pub header: Header,
    /// Source, group, operation, resource.
    pub route: Route,
    /// The body.
    pub content: Content,
}

impl Message {
    /// A new request (fresh id, current time) on `route` carrying `content`.
    pub fn new(route: Route, content: impl Into<Content>) -> Self {
        Message {
            header: Header::new(),
            route,
            content: content.into(),
        }
    }

    /// A successful reply to `request`: new id, parent = the request's id, same route with
    /// operation `response`.
    pub fn reply(request: &Message, content: impl Into<Content>) -> Self {
        Self::answer(request, operation::RESPONSE, content.into())
    }

    /// A failed reply to `request`: parent = the request's id, operation `error`, the reason
    /// as content.
    pub fn error_reply(request: &Message, reason: impl Into<String>) -> Self {
        Self::answer(request, operation::ERROR, Content::text(reason))
    }

    fn answer(request: &Message, op: &str, content: Content) -> Self {
        let mut route = request.route.clone();
        route.operation = op.into();
        let mut header = Header::new();
        header.parent_id = Some(request.header.id.clone());
        Message {
            header,
            route,
            content,
        }
    }

    /// True when the message carries stream bytes (group `mesh` with byte content): the
    /// cloud link sends it as a binary frame ([`crate::frame`]) instead of JSON text.
    pub fn is_stream_payload(&self) -> bool {
        self.route.group == crate::route::group::MESH && matches!(self.content, Content::Bytes(_))
    }

    /// Marks the message as a request that waits for a reply.
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.header.sync = sync;
        self
    }

    /// Sets the Kubernetes resourceVersion carried.
    pub fn with_resource_version(mut self, rv: impl Into<CompactString>) -> Self {
        self.header.resource_version = rv.into();
        self
    }

    /// The id.
    pub fn id(&self) -> &MsgId {
        &self.header.id
    }

    /// The id of the message this one answers, if any.
    pub fn parent_id(&self) -> Option<&MsgId> {
        self.header.parent_id.as_ref().filter(|p| !p.is_empty())
    }

    /// `route.operation`.
    pub fn operation(&self) -> &str {
        &self.route.operation
    }

    /// `route.resource`.
    pub fn resource(&self) -> &str {
        &self.route.resource
    }

    /// True for `response` and `error` replies.
    pub fn is_reply(&self) -> bool {
        self.parent_id().is_some()
            && matches!(self.operation(), operation::RESPONSE | operation::ERROR)
    }

    /// The message as KubeEdge JSON text.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    /// The message as KubeEdge JSON bytes.
    pub fn to_json_vec(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Parses KubeEdge JSON. The text must be a JSON object (serde would also accept an
    /// array as a struct, which no peer sends).
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(Error::NotAnObject);
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// The current time in Unix milliseconds.
///
/// Read from the coarse realtime clock: a few nanoseconds instead of tens on the bus hot
/// path, at the cost of the kernel tick's resolution (1–4 ms), which is within what a
/// millisecond timestamp promises anyway.
pub fn now_millis() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    t.tv_sec * 1000 + t.tv_nsec / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzz/ (message_json): a number past u64 is read as a float, and without
    /// exact rounding it printed back as another number, so content changed a little on
    /// every hop that parsed and wrote it (cloud, edge store, socket).
    #[test]
    fn numbers_in_content_survive_being_relayed() {
        let input = br#"{"content":[{"apiVersion":"v1","OOOOrn":"v5","sourcts":[{"addresses":[{"rt":111111111111000006371555158481735923}]}]}]}"#;
        let once = Message::from_json(input).unwrap().to_json_vec().unwrap();
        let twice = Message::from_json(&once).unwrap().to_json_vec().unwrap();
        assert_eq!(
            String::from_utf8(twice).unwrap(),
            String::from_utf8(once).unwrap()
        );
    }
}
