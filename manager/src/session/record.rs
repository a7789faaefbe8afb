//! A session as it is stored: metadata and attributes (the envelope of
//! `store::envelope` wraps it with a format marker).

use serde::{Deserialize, Serialize};

use crate::session::attributes::Attributes;

/// Session metadata and attributes as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    /// Creation time, unix milliseconds.
    pub(crate) created_at_ms: u64,
    /// Last access known when the record was written, unix milliseconds.
    pub(crate) last_accessed_ms: u64,
    /// Inactivity timeout in seconds; 0 = never expires.
    pub(crate) max_inactive_secs: u64,
    /// The attributes.
    pub(crate) attributes: Attributes,
}

/// Borrowed twin of [`SessionRecord`] for encoding without cloning the
/// attributes; field order and types must match (tested by roundtrip).
#[derive(Serialize)]
pub(crate) struct RecordRef<'a> {
    pub(crate) created_at_ms: u64,
    pub(crate) last_accessed_ms: u64,
    pub(crate) max_inactive_secs: u64,
    pub(crate) attributes: &'a Attributes,
}
