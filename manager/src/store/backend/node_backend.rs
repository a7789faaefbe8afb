//! The [`NodeBackend`] trait and the types of its calls.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::BackendError;

/// When a stored item expires. Relative durations above 30 days are sent to
/// memcached as an absolute unix time (memcached's rule), which callers never
/// need to care about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Never expires (it may still be evicted under memory pressure).
    Never,
    /// Expires after this long; rounded up to whole seconds, at least one.
    After(Duration),
}

impl Expiry {
    /// Whole seconds, rounded up, at least 1; `None` for [`Expiry::Never`].
    pub fn whole_secs(self) -> Option<u32> {
        match self {
            Self::Never => None,
            Self::After(d) => {
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                Some(u32::try_from(secs.max(1)).unwrap_or(u32::MAX))
            }
        }
    }
}

/// Operations the session manager needs from one memcached node.
#[async_trait]
pub trait NodeBackend: Send + Sync + 'static {
    /// Reads a value; `Ok(None)` on a miss.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError>;
    /// Reads a value with its CAS token; `Ok(None)` on a miss.
    async fn get_with_cas(&self, key: &str) -> Result<Option<Versioned>, BackendError>;
    /// Reads a value with its remaining TTL (`None`: it never expires);
    /// `Ok(None)` on a miss.
    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Vec<u8>, Option<Duration>)>, BackendError>;
    /// Stores a value unconditionally.
    async fn set(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<(), BackendError>;
    /// Stores a value only if the key is absent; `true` when this call stored it.
    async fn add(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<bool, BackendError>;
    /// Like [`add`](Self::add), returning the stored item's CAS token (for
    /// [`delete_if_cas`](Self::delete_if_cas)); `None` when the key existed.
    /// Locks use this: only their owner can release them.
    async fn add_with_cas(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<Option<u64>, BackendError>;
    /// Deletes the key only if its CAS token is still `cas`; `false` when it
    /// changed or is gone. A `touch` does not change the token.
    async fn delete_if_cas(&self, key: &str, cas: u64) -> Result<bool, BackendError>;
    /// Rewrites `value` with a new expiry only if the item's CAS token is
    /// still `cas`; returns the new token, `None` when the item changed or
    /// is gone. Locks renew this way, so a renewal never extends a lock
    /// that is no longer ours.
    async fn replace_if_cas(
        &self,
        key: &str,
        value: &[u8],
        cas: u64,
        expiry: Expiry,
    ) -> Result<Option<u64>, BackendError>;
    /// Sets a new expiry without rewriting the value; `false` when the key is missing.
    async fn touch(&self, key: &str, expiry: Expiry) -> Result<bool, BackendError>;
    /// Deletes a key; `false` when it was not there.
    async fn delete(&self, key: &str) -> Result<bool, BackendError>;

    /// Reads `key` with its CAS token and slides its expiry to `expiry` —
    /// one operation (`mg <key> v c T<ttl>` on memcached). `Ok(None)` on a
    /// miss.
    async fn get_and_touch(&self, key: &str, expiry: Expiry) -> Result<Option<Versioned>, BackendError>;

    /// Adds `lock` (only if absent), then reads `key` with its CAS token
    /// and slides its expiry — one round trip where the backend pipelines
    /// (memcached does). The read runs after the add on the node, so when
    /// the add succeeded the value was read under the lock. Returns the
    /// lock's CAS token (`None`: it existed) and the value.
    async fn add_then_get_and_touch(
        &self,
        lock: Item<'_>,
        key: &str,
        expiry: Expiry,
    ) -> Result<(Option<u64>, Option<Versioned>), BackendError> {
        let added = self.add_with_cas(lock.key, lock.value, lock.expiry).await?;
        let got = self.get_and_touch(key, expiry).await?;
        Ok((added, got))
    }

    /// Stores `item` as `mode` says.
    async fn store_as(&self, item: Item<'_>, mode: WriteMode) -> Result<WriteOutcome, BackendError>;

    /// Stores many items — one round trip where the backend can pipeline —
    /// with one outcome per item, in order.
    async fn set_many(&self, items: &[Item<'_>]) -> Vec<Result<(), BackendError>> {
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            outcomes.push(self.set(item.key, item.value, item.expiry).await);
        }
        outcomes
    }
}

/// A value with the CAS token it had when it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// Its CAS token: changes with every write of the item.
    pub cas: u64,
}

/// When a conditional write stores its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Always.
    Set,
    /// Only if the key is absent.
    Add,
    /// Only if the item's CAS token is still this one.
    IfCas(u64),
}

/// What a conditional write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored; the item's new CAS token.
    Stored(u64),
    /// Not stored: the key exists (add), or was changed or is gone (CAS).
    Refused,
}

/// One item to store.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    /// The key.
    pub key: &'a str,
    /// The value.
    pub value: &'a [u8],
    /// When it expires.
    pub expiry: Expiry,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rounds_up_to_whole_seconds() {
        assert_eq!(Expiry::Never.whole_secs(), None);
        assert_eq!(Expiry::After(Duration::from_millis(1)).whole_secs(), Some(1));
        assert_eq!(Expiry::After(Duration::ZERO).whole_secs(), Some(1));
        assert_eq!(Expiry::After(Duration::from_millis(2500)).whole_secs(), Some(3));
        assert_eq!(
            Expiry::After(Duration::from_secs(40 * 86_400)).whole_secs(),
            Some(3_456_000)
        );
    }
}
