//! The bytes stored in memcached for one session: a two-byte magic, then a
//! postcard-encoded, versioned envelope.
//!
//! Schema evolution: [`Envelope`] is an enum whose variants are only ever
//! added (the variant index is the first postcard byte), so a new version
//! of this crate reads every older blob, and an older version recognises a
//! newer blob as "not mine" instead of misreading it. Any bytes that fail
//! to decode — truncated, foreign, from a newer version, trailing garbage —
//! yield [`DecodeError`], which the manager treats as "no session".

use serde::{Deserialize, Serialize};

/// First bytes of every blob, to recognise foreign values cheaply.
const MAGIC: [u8; 2] = [0xA5, 0x53];

pub(crate) use crate::attributes::Attributes;

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

#[derive(Serialize)]
enum EnvelopeRef<'a> {
    V1(RecordRef<'a>),
}

/// Stored format versions; add variants, never change or remove one.
#[derive(Deserialize)]
enum Envelope {
    V1(SessionRecord),
}

/// Why stored bytes were not accepted as a session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("not a session blob (missing magic bytes)")]
    Foreign,
    #[error("undecodable session blob: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("{0} trailing bytes after the session blob")]
    Trailing(usize),
}

/// Encodes a record into the stored form.
pub(crate) fn encode(record: RecordRef<'_>) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    // Serializing maps, strings and byte vectors into a Vec cannot fail.
    postcard::to_io(&EnvelopeRef::V1(record), &mut out).expect("postcard encodes session records into a Vec");
    out
}

/// Decodes stored bytes; never panics, whatever the input.
pub(crate) fn decode(bytes: &[u8]) -> Result<SessionRecord, DecodeError> {
    let body = bytes.strip_prefix(&MAGIC[..]).ok_or(DecodeError::Foreign)?;
    let (envelope, rest) = postcard::take_from_bytes::<Envelope>(body)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    match envelope {
        Envelope::V1(record) => Ok(record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SessionRecord {
        let mut attributes = Attributes::default();
        attributes.insert("count".into(), postcard::to_allocvec(&7u64).unwrap().into());
        attributes.insert("user".into(), postcard::to_allocvec("ann").unwrap().into());
        SessionRecord {
            created_at_ms: 1_700_000_000_000,
            last_accessed_ms: 1_700_000_100_000,
            max_inactive_secs: 1800,
            attributes,
        }
    }

    fn borrowed(record: &SessionRecord) -> RecordRef<'_> {
        RecordRef {
            created_at_ms: record.created_at_ms,
            last_accessed_ms: record.last_accessed_ms,
            max_inactive_secs: record.max_inactive_secs,
            attributes: &record.attributes,
        }
    }

    #[test]
    fn roundtrips() {
        let bytes = encode(borrowed(&record()));
        assert_eq!(decode(&bytes).unwrap(), record());
    }

    #[test]
    fn encoding_is_deterministic() {
        assert_eq!(encode(borrowed(&record())), encode(borrowed(&record())));
    }

    #[test]
    fn rejects_every_kind_of_bad_bytes() {
        let good = encode(borrowed(&record()));
        assert!(matches!(decode(b""), Err(DecodeError::Foreign)));
        assert!(matches!(decode(b"{\"json\":1}"), Err(DecodeError::Foreign)));
        for cut in 2..good.len() {
            assert!(decode(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut newer = good.clone();
        newer[2] = 9; // an envelope variant this version does not know
        assert!(matches!(decode(&newer), Err(DecodeError::Malformed(_))));
        let mut trailing = good;
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(DecodeError::Trailing(1))));
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode(&with_magic);
        }

        #[test]
        fn any_record_roundtrips(
            created in proptest::num::u64::ANY,
            accessed in proptest::num::u64::ANY,
            max in proptest::num::u64::ANY,
            attributes in proptest::collection::btree_map(".{0,16}", proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0..8),
        ) {
            let record = SessionRecord {
                created_at_ms: created,
                last_accessed_ms: accessed,
                max_inactive_secs: max,
                attributes: attributes.into_iter().map(|(k, v)| (k, v.into_boxed_slice())).collect(),
            };
            proptest::prop_assert_eq!(decode(&encode(borrowed(&record))).unwrap(), record);
        }
    }
}
