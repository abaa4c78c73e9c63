//! The body of a message: any JSON value, or raw bytes.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::error::{Error, Result};

/// A message body.
///
/// In JSON, raw bytes become a standard base64 string, as Go's `encoding/json` writes a
/// `[]byte`; a binary frame carries them untouched. JSON cannot tell a base64 string from any
/// other string, so content read from JSON is always [`Content::Json`]; [`Content::to_bytes`]
/// decodes it when bytes are expected.
#[derive(Clone, Debug)]
pub enum Content {
    /// A JSON value (objects, strings such as `"OK"`, `null` for no content).
    Json(Value),
    /// A JSON value shared with other messages: the same object sent to many nodes is
    /// counted, not copied, for each. On the wire exactly as [`Content::Json`].
    Shared(Arc<Value>),
    /// Raw bytes, such as tunnel stream data.
    Bytes(Bytes),
}

impl PartialEq for Content {
    /// Shared and owned JSON are equal when their values are.
    fn eq(&self, other: &Self) -> bool {
        match (self.json(), other.json()) {
            (Some(a), Some(b)) => a == b,
            (None, None) => {
                matches!((self, other), (Content::Bytes(a), Content::Bytes(b)) if a == b)
            }
            _ => false,
        }
    }
}

impl Default for Content {
    fn default() -> Self {
        Content::Json(Value::Null)
    }
}

impl Content {
    /// Content serialized from any serde value.
    pub fn from_serialize<T: Serialize>(value: &T) -> Result<Self> {
        Ok(Content::Json(serde_json::to_value(value)?))
    }

    /// A JSON string.
    pub fn text(s: impl Into<String>) -> Self {
        Content::Json(Value::String(s.into()))
    }

    /// True when there is no content (`null`).
    pub fn is_null(&self) -> bool {
        matches!(self.json(), Some(Value::Null))
    }

    /// The JSON value, owned or shared; `None` for bytes.
    pub fn json(&self) -> Option<&Value> {
        match self {
            Content::Json(v) => Some(v),
            Content::Shared(v) => Some(v),
            Content::Bytes(_) => None,
        }
    }

    /// The JSON value, owned (a shared one copied unless this was its last holder); `None`
    /// for bytes.
    pub fn into_json(self) -> Option<Value> {
        match self {
            Content::Json(v) => Some(v),
            Content::Shared(v) => Some(Arc::unwrap_or_clone(v)),
            Content::Bytes(_) => None,
        }
    }

    /// The content as a string slice, when it is a JSON string.
    pub fn as_str(&self) -> Option<&str> {
        self.json().and_then(Value::as_str)
    }

    /// The content as raw bytes: bytes as they are, a JSON string decoded from base64.
    pub fn to_bytes(&self) -> Result<Bytes> {
        match (self, self.json()) {
            (Content::Bytes(b), _) => Ok(b.clone()),
            (_, Some(Value::String(s))) => BASE64
                .decode(s)
                .map(Bytes::from)
                .map_err(|_| Error::NotBytes("string is not base64")),
            _ => Err(Error::NotBytes("content is a JSON value, not a string")),
        }
    }

    /// Deserializes the content into `T` (bytes are read as JSON text).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        match self {
            Content::Json(v) => Ok(T::deserialize(v)?),
            Content::Shared(v) => Ok(T::deserialize(&**v)?),
            Content::Bytes(b) => Ok(serde_json::from_slice(b)?),
        }
    }
}

impl From<Value> for Content {
    fn from(v: Value) -> Self {
        Content::Json(v)
    }
}

impl From<Arc<Value>> for Content {
    fn from(v: Arc<Value>) -> Self {
        Content::Shared(v)
    }
}

impl From<Bytes> for Content {
    fn from(b: Bytes) -> Self {
        Content::Bytes(b)
    }
}

impl From<&str> for Content {
    fn from(s: &str) -> Self {
        Content::text(s)
    }
}

impl Serialize for Content {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::Json(v) => v.serialize(serializer),
            Content::Shared(v) => v.serialize(serializer),
            Content::Bytes(b) => serializer.serialize_str(&BASE64.encode(b)),
        }
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Content::Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shared JSON is the same message as owned JSON, in JSON text and in a binary frame,
    /// and reads back as it.
    #[test]
    fn shared_json_goes_on_the_wire_as_owned_json() {
        use crate::{FrameCodec, Message, Route};
        let value = serde_json::json!({"kind": "Service", "metadata": {"name": "web"}});
        let route = Route::new(
            "edgecontroller",
            "resource",
            "insert",
            "default/service/web",
        );
        let owned = Message::new(route.clone(), value.clone());
        let mut shared = Message::new(route, Arc::new(value.clone()));
        shared.header = owned.header.clone();
        assert_eq!(owned.to_json().unwrap(), shared.to_json().unwrap());
        let codec = FrameCodec::default();
        let frame = codec.encode_to_bytes(&shared).unwrap();
        assert_eq!(frame, codec.encode_to_bytes(&owned).unwrap());
        let back = codec.decode_frame(frame).unwrap();
        assert_eq!(back.content, shared.content);
        assert_eq!(back.content.into_json(), Some(value));
        assert_eq!(shared.content.decode::<Value>().unwrap()["kind"], "Service");
    }

    #[test]
    fn bytes_are_base64_in_json_like_go() {
        let c = Content::Bytes(Bytes::from_static(b"hello\x00\xff"));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, "\"aGVsbG8A/w==\"");
        let back: Content = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.to_bytes().unwrap(),
            Bytes::from_static(b"hello\x00\xff")
        );
    }

    #[test]
    fn non_bytes_are_reported() {
        assert!(Content::text("not base64!").to_bytes().is_err());
        assert!(
            Content::Json(serde_json::json!({"a": 1}))
                .to_bytes()
                .is_err()
        );
    }
}
