//! The bytes stored in memcached for one session: a two-byte magic, then a
//! postcard-encoded, versioned envelope.
//!
//! Schema evolution: [`Envelope`] is an enum whose variants are only ever
//! added (the variant index is the first postcard byte), so a new version
//! of this crate reads every older blob, and an older version recognises a
//! newer blob as "not mine" instead of misreading it. Any bytes that fail
//! to decode — truncated, foreign, from a newer version, trailing garbage —
//! yield [`DecodeError`], which the manager treats as "no session".
//!
//! Variants: `V1` is a sticky-mode backup; `V2` a non-sticky session whose
//! memcached TTL is its inactivity clock (format 2: no separate validity
//! record); `Moved` a non-sticky forward record left where a relocated
//! session's copy was; `Gone` a tombstone left by a logout, an expiry or a
//! cycled id (both modes); `Document` a copy of a document of the
//! replicated store ([`crate::replicated`]). Each reader accepts only its
//! own variants, so records of another mode or store, or of the earlier
//! non-sticky format (`V1` with validity records), are never misread: they
//! are "no session".

use serde::{Deserialize, Serialize};

/// First bytes of every blob, to recognise foreign values cheaply.
const MAGIC: [u8; 2] = [0xA5, 0x53];

pub(crate) use crate::session::record::{RecordRef, SessionRecord};
pub(crate) use crate::store::document::{DocumentCopy, DocumentCopyRef};

#[derive(Serialize)]
enum EnvelopeRef<'a> {
    V1(RecordRef<'a>),
    V2(RecordRef<'a>),
    Moved(&'a str),
    Gone,
    Document(DocumentCopyRef<'a>),
}

/// Stored format versions; add variants, never change or remove one.
#[derive(Deserialize)]
enum Envelope {
    V1(SessionRecord),
    V2(SessionRecord),
    Moved(String),
    Gone,
    Document(DocumentCopy),
}

/// Which mode's records a blob must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Sticky backups (`V1`).
    Sticky,
    /// Non-sticky sessions and forward records (`V2`, `Moved`).
    NonSticky,
    /// Copies of the replicated store (`Document`).
    Document,
}

/// What a blob holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stored {
    /// A session.
    Session(SessionRecord),
    /// A non-sticky session relocated to the id given: read it there.
    Moved(String),
    /// A non-sticky session logged out: its backup must not revive it.
    Gone,
    /// A copy of a replicated-store document (deletion marks included).
    Document(DocumentCopy),
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
    #[error("a session blob of the other mode or of an earlier non-sticky format")]
    OtherFormat,
}

/// Encodes a session record into the stored form of a session `mode`.
pub(crate) fn encode(record: RecordRef<'_>, mode: Format) -> Vec<u8> {
    match mode {
        Format::Sticky => encode_envelope(&EnvelopeRef::V1(record)),
        Format::NonSticky => encode_envelope(&EnvelopeRef::V2(record)),
        Format::Document => unreachable!("documents are encoded with encode_document"),
    }
}

/// Encodes a copy of a replicated-store document.
pub(crate) fn encode_document(copy: DocumentCopyRef<'_>) -> Vec<u8> {
    encode_envelope(&EnvelopeRef::Document(copy))
}

/// Encodes a non-sticky forward record: the session now lives under `to`.
pub(crate) fn encode_moved(to: &str) -> Vec<u8> {
    encode_envelope(&EnvelopeRef::Moved(to))
}

/// Encodes a non-sticky tombstone: the session was logged out.
pub(crate) fn encode_gone() -> Vec<u8> {
    encode_envelope(&EnvelopeRef::Gone)
}

fn encode_envelope(envelope: &EnvelopeRef<'_>) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    // Serializing maps, strings and byte vectors into a Vec cannot fail.
    postcard::to_io(envelope, &mut out).expect("postcard encodes session records into a Vec");
    out
}

/// Decodes stored bytes of `format`; never panics, whatever the input.
pub(crate) fn decode(bytes: &[u8], format: Format) -> Result<Stored, DecodeError> {
    let body = bytes.strip_prefix(&MAGIC[..]).ok_or(DecodeError::Foreign)?;
    let (envelope, rest) = postcard::take_from_bytes::<Envelope>(body)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    match (envelope, format) {
        (Envelope::V1(record), Format::Sticky) | (Envelope::V2(record), Format::NonSticky) => {
            Ok(Stored::Session(record))
        }
        (Envelope::Moved(to), Format::NonSticky) => Ok(Stored::Moved(to)),
        // Both modes leave tombstones (logout, expiry, a cycled id).
        (Envelope::Gone, Format::Sticky | Format::NonSticky) => Ok(Stored::Gone),
        (Envelope::Document(copy), Format::Document) => Ok(Stored::Document(copy)),
        _ => Err(DecodeError::OtherFormat),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::attributes::Attributes;

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
        for format in [Format::Sticky, Format::NonSticky] {
            let bytes = encode(borrowed(&record()), format);
            assert_eq!(decode(&bytes, format).unwrap(), Stored::Session(record()));
        }
        let moved = encode_moved("abc-n2");
        assert_eq!(
            decode(&moved, Format::NonSticky).unwrap(),
            Stored::Moved("abc-n2".to_owned())
        );
        assert_eq!(decode(&encode_gone(), Format::NonSticky).unwrap(), Stored::Gone);
    }

    #[test]
    fn a_mode_never_reads_the_other_modes_records() {
        let sticky = encode(borrowed(&record()), Format::Sticky);
        let non_sticky = encode(borrowed(&record()), Format::NonSticky);
        assert!(matches!(
            decode(&sticky, Format::NonSticky),
            Err(DecodeError::OtherFormat)
        ));
        assert!(matches!(
            decode(&non_sticky, Format::Sticky),
            Err(DecodeError::OtherFormat)
        ));
        assert!(matches!(
            decode(&encode_moved("x"), Format::Sticky),
            Err(DecodeError::OtherFormat)
        ));
        assert_eq!(decode(&encode_gone(), Format::Sticky).unwrap(), Stored::Gone);
        let document = encode_document(DocumentCopyRef {
            version: 1,
            expires_at_ms: 2,
            body: Some(b"{}"),
        });
        for format in [Format::Sticky, Format::NonSticky] {
            assert!(matches!(decode(&document, format), Err(DecodeError::OtherFormat)));
        }
        for session in [sticky, non_sticky, encode_gone(), encode_moved("x")] {
            assert!(matches!(
                decode(&session, Format::Document),
                Err(DecodeError::OtherFormat)
            ));
        }
    }

    #[test]
    fn document_copies_roundtrip_bodies_and_deletion_marks() {
        for body in [
            Some(&b""[..]),
            Some(&b"{\"count\":1}"[..]),
            Some(&[0u8, 255, 7][..]),
            None,
        ] {
            let written = DocumentCopyRef {
                version: 1_700_000_000_000_123,
                expires_at_ms: u64::MAX,
                body,
            };
            let read = DocumentCopy {
                version: written.version,
                expires_at_ms: written.expires_at_ms,
                body: body.map(<[u8]>::to_vec),
            };
            assert_eq!(
                decode(&encode_document(written), Format::Document).unwrap(),
                Stored::Document(read.clone())
            );
            assert_eq!(encode_document(read.as_ref()), encode_document(written));
        }
    }

    #[test]
    fn encoding_is_deterministic() {
        assert_eq!(
            encode(borrowed(&record()), Format::Sticky),
            encode(borrowed(&record()), Format::Sticky)
        );
    }

    #[test]
    fn rejects_every_kind_of_bad_bytes() {
        let good = encode(borrowed(&record()), Format::Sticky);
        let decode = |bytes: &[u8]| decode(bytes, Format::Sticky);
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
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            for format in [Format::Sticky, Format::NonSticky, Format::Document] {
                let _ = decode(&bytes, format);
                let _ = decode(&with_magic, format);
            }
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
            let bytes = encode(borrowed(&record), Format::NonSticky);
            proptest::prop_assert_eq!(decode(&bytes, Format::NonSticky).unwrap(), Stored::Session(record));
        }
    }
}
