//! The validity record of a non-sticky session: a few bytes whose memcached
//! TTL *is* the session's inactivity clock.
//!
//! Every request that carries the session id slides it with a `touch`
//! (`mg <key> T<ttl>`: one command, no value transferred), so read-only
//! traffic keeps a session alive without rewriting the session itself. A
//! session whose validity record is gone has expired, whatever its data
//! key still holds. The content (inactivity timeout and last write time)
//! serves diagnostics and future formats.

use serde::{Deserialize, Serialize};

const MAGIC: [u8; 2] = [0xA5, 0x56];

/// What the validity record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Validity {
    /// Inactivity timeout in seconds; 0 = never expires.
    pub(crate) max_inactive_secs: u64,
    /// When the session was last written, unix milliseconds.
    pub(crate) last_written_ms: u64,
}

#[derive(Serialize, Deserialize)]
enum Envelope {
    V1(Validity),
}

impl Validity {
    pub(crate) fn encode(self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        postcard::to_io(&Envelope::V1(self), &mut out).expect("postcard encodes into a Vec");
        out
    }

    /// `None` for anything that is not a validity record of ours.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let body = bytes.strip_prefix(&MAGIC[..])?;
        match postcard::take_from_bytes::<Envelope>(body) {
            Ok((Envelope::V1(validity), [])) => Some(validity),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_and_rejects_garbage() {
        let v = Validity {
            max_inactive_secs: 1800,
            last_written_ms: 1_700_000_000_000,
        };
        assert_eq!(Validity::decode(&v.encode()), Some(v));
        assert_eq!(Validity::decode(b""), None);
        assert_eq!(Validity::decode(b"\xA5\x56\x07"), None);
        let mut trailing = v.encode();
        trailing.push(1);
        assert_eq!(Validity::decode(&trailing), None);
    }
}
