//! One stored copy of a document of the replicated store
//! ([`crate::replicated`]): an opaque body (or the mark that it was
//! deleted), when it expires, and the version that orders copies that
//! disagree.

use serde::{Deserialize, Serialize};

/// A document copy as stored (inside the envelope, sealed when configured).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct DocumentCopy {
    /// Orders copies: the higher version was written later (microseconds
    /// since the unix epoch by the writer's clock, strictly increasing per
    /// process).
    pub(crate) version: u64,
    /// When the document expires, unix milliseconds.
    pub(crate) expires_at_ms: u64,
    /// The body, or `None` for a deletion mark (tombstone).
    pub(crate) body: Option<Vec<u8>>,
}

/// Borrowed twin of [`DocumentCopy`] for encoding without copying the
/// body; field order and wire types must match (tested by roundtrip).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct DocumentCopyRef<'a> {
    pub(crate) version: u64,
    pub(crate) expires_at_ms: u64,
    #[serde(serialize_with = "body_as_seq")]
    pub(crate) body: Option<&'a [u8]>,
}

/// Serializes the body as a sequence of bytes, as `Option<Vec<u8>>`
/// deserializes it (serde writes a `&[u8]` as "bytes", a distinct type for
/// self-describing formats).
fn body_as_seq<S: serde::Serializer>(body: &Option<&[u8]>, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    match body {
        None => serializer.serialize_none(),
        Some(bytes) => {
            struct Seq<'b>(&'b [u8]);
            impl Serialize for Seq<'_> {
                fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
                    for byte in self.0 {
                        seq.serialize_element(byte)?;
                    }
                    seq.end()
                }
            }
            serializer.serialize_some(&Seq(bytes))
        }
    }
}

impl DocumentCopy {
    /// The borrowed form, for writing this copy again (a repair).
    pub(crate) fn as_ref(&self) -> DocumentCopyRef<'_> {
        DocumentCopyRef {
            version: self.version,
            expires_at_ms: self.expires_at_ms,
            body: self.body.as_deref(),
        }
    }
}
