//! Message identifiers.
//!
//! KubeEdge peers write ids as lowercase hyphenated UUID v4 strings. Keeping such ids as 16
//! bytes instead of a 36-byte heap string makes creating, hashing and comparing them cheap on
//! the bus hot path; any other string (another peer's convention) is kept verbatim, so an id
//! always goes back on the wire exactly as it came.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The id of a message (`header.msg_id`, `header.parent_msg_id`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MsgId(Repr);

// Invariant: `Text` never holds a canonical lowercase UUID nor the empty string, so derived
// Eq/Hash agree with string equality.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Empty,
    Uuid(Uuid),
    Text(Arc<str>),
}

impl MsgId {
    /// A fresh random UUID v4 id.
    pub fn new_v4() -> Self {
        MsgId(Repr::Uuid(Uuid::new_v4()))
    }

    /// The empty id (Go's zero value), which a peer may send when it set none.
    pub const fn empty() -> Self {
        MsgId(Repr::Empty)
    }

    /// True for the empty id.
    pub fn is_empty(&self) -> bool {
        matches!(self.0, Repr::Empty)
    }

    /// Parses any string, keeping it byte for byte.
    pub fn parse(s: &str) -> Self {
        if s.is_empty() {
            return Self::empty();
        }
        if is_canonical_uuid(s)
            && let Ok(u) = Uuid::try_parse(s)
        {
            return MsgId(Repr::Uuid(u));
        }
        MsgId(Repr::Text(Arc::from(s)))
    }

    /// Writes the id's text into `buf` and returns it, without allocating for UUIDs.
    pub fn as_str<'a>(&'a self, buf: &'a mut [u8; 36]) -> &'a str {
        match &self.0 {
            Repr::Empty => "",
            Repr::Uuid(u) => u.hyphenated().encode_lower(buf),
            Repr::Text(t) => t,
        }
    }
}

/// Only the exact form `Uuid` prints (lowercase, hyphenated) may become a `Repr::Uuid`;
/// anything else must round-trip unchanged.
fn is_canonical_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

impl Default for MsgId {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Empty => Ok(()),
            Repr::Uuid(u) => fmt::Display::fmt(&u.hyphenated(), f),
            Repr::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsgId({self})")
    }
}

impl From<&str> for MsgId {
    fn from(s: &str) -> Self {
        Self::parse(s)
    }
}

impl From<Uuid> for MsgId {
    fn from(u: Uuid) -> Self {
        MsgId(Repr::Uuid(u))
    }
}

impl Serialize for MsgId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 36];
        serializer.serialize_str(self.as_str(&mut buf))
    }
}

impl<'de> Deserialize<'de> for MsgId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MsgId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message id string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MsgId, E> {
                Ok(MsgId::parse(v))
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_round_trips_and_equals_parsed_form() {
        let id = MsgId::new_v4();
        let text = id.to_string();
        assert_eq!(MsgId::parse(&text), id);
        assert!(matches!(MsgId::parse(&text).0, Repr::Uuid(_)));
    }

    #[test]
    fn non_canonical_ids_are_kept_verbatim() {
        assert!(MsgId::parse("").is_empty());
        assert_eq!(MsgId::parse(""), MsgId::default());
        for s in [
            "abc",
            "6B1E0C4E-6F53-4C0B-9B0A-3B2B1C1D1E1F",
            "6b1e0c4e6f534c0b9b0a3b2b1c1d1e1f",
        ] {
            let id = MsgId::parse(s);
            assert_eq!(id.to_string(), s);
            assert!(matches!(id.0, Repr::Text(_)));
        }
    }
}
