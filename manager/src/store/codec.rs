//! The bytes of a stored blob: [`envelope`]-encoded,
//! then sealed for its key when `sessionEncryptionKeys` is set.

use std::borrow::Cow;
use std::sync::Arc;

use crate::store::envelope::{self, DecodeError, Format, Stored};
use crate::store::seal::Sealer;

/// Seals and opens blobs (a no-op without encryption keys).
pub(crate) struct Codec {
    sealer: Option<Arc<Sealer>>,
}

/// Why stored bytes are not a session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Rejected {
    #[error("it failed authentication (tampered, foreign, or sealed with an unknown key)")]
    Unauthentic,
    #[error(transparent)]
    Undecodable(#[from] DecodeError),
}

impl Codec {
    pub(crate) fn new(sealer: Option<Arc<Sealer>>) -> Self {
        Self { sealer }
    }

    /// Seals a blob for `key` when encryption is configured.
    pub(crate) fn seal<'b>(&self, key: &str, bytes: &'b [u8]) -> Cow<'b, [u8]> {
        match &self.sealer {
            None => Cow::Borrowed(bytes),
            Some(sealer) => Cow::Owned(sealer.seal(key, bytes)),
        }
    }

    /// [`seal`](Self::seal) for an owned blob (no copy without encryption).
    pub(crate) fn seal_owned(&self, key: &str, bytes: Vec<u8>) -> Vec<u8> {
        match &self.sealer {
            None => bytes,
            Some(sealer) => sealer.seal(key, &bytes),
        }
    }

    /// Opens a blob read from `key`; `None` when it fails authentication.
    pub(crate) fn open<'b>(&self, key: &str, bytes: &'b [u8]) -> Option<Cow<'b, [u8]>> {
        match &self.sealer {
            None => Some(Cow::Borrowed(bytes)),
            Some(sealer) => sealer.open(key, bytes).map(Cow::Owned),
        }
    }

    /// What the blob read from `key` holds, opened and decoded as `format`.
    pub(crate) fn decode(&self, key: &str, bytes: &[u8], format: Format) -> Result<Stored, Rejected> {
        let plain = self.open(key, bytes).ok_or(Rejected::Unauthentic)?;
        Ok(envelope::decode(&plain, format)?)
    }
}
