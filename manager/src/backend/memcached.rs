//! [`NodeBackend`] for a real memcached node, on `memcache`'s async meta
//! protocol client (`exp::AsyncMemcache`): a per-node connection pool that
//! redials dead connections by itself, so a node that comes back is used
//! again without a restart.

use std::time::Duration;

use async_trait::async_trait;
use memcache::exp::{AsyncMemcache, Error as ClientError, Get, Meta, MutationStatus, Op, OpResult, Set, Ttl};

use super::{Expiry, Item, NodeBackend, Versioned, WriteMode, WriteOutcome};
use crate::error::BackendError;

/// Idle connections kept per node. Above the peak number of concurrent
/// operations per node, or every burst beyond it pays a TCP dial (a
/// non-sticky request runs two or three operations at once per node).
const MAX_IDLE_CONNECTIONS: usize = 256;

/// One memcached node.
#[derive(Clone, Debug)]
pub struct MemcachedNode {
    client: AsyncMemcache,
    timeout: Duration,
}

impl MemcachedNode {
    /// Resolves `address` (`host:port`) now; connections are dialed lazily.
    /// Every exchange, and every dial, is bounded by `timeout`.
    pub async fn connect(address: &str, timeout: Duration) -> Result<Self, BackendError> {
        let client = AsyncMemcache::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .max_idle(MAX_IDLE_CONNECTIONS)
            .connect_async([address])
            .await
            .map_err(|e| map_error(e, timeout))?;
        Ok(Self { client, timeout })
    }

    fn error(&self, error: ClientError) -> BackendError {
        map_error(error, self.timeout)
    }

    /// One `ms` as `mode` says, returning the new CAS token; `None` when
    /// it was not stored (add: the key exists; CAS: changed or gone).
    async fn set_returning_cas(
        &self,
        key: &str,
        value: &[u8],
        expiry: Expiry,
        mode: WriteMode,
    ) -> Result<Option<u64>, BackendError> {
        let request = self.client.meta().set(key, value).ttl(ttl(expiry)).return_cas();
        let request = match mode {
            WriteMode::Set => request,
            WriteMode::Add => request.add(),
            WriteMode::IfCas(cas) => request.compare_cas(cas),
        };
        let result = request.send().await.map_err(|e| self.error(e))?;
        if !result.applied() {
            return Ok(None);
        }
        result.cas.map(Some).ok_or_else(no_cas_token)
    }

    /// Runs a pipelined batch (one exchange) and returns its results in order.
    async fn batch(&self, operations: [Op; 2]) -> Result<[OpResult; 2], BackendError> {
        let results = self
            .client
            .meta()
            .run_batch(operations)
            .await
            .map_err(|e| self.error(e))?;
        let mut results = results.into_iter().map(|r| r.map_err(|e| self.error(e)));
        let mut next = || {
            results
                .next()
                .unwrap_or_else(|| Err(BackendError::Protocol("batch answered too few operations".to_owned())))
        };
        Ok([next()?, next()?])
    }
}

fn ttl(expiry: Expiry) -> Ttl {
    match expiry.whole_secs() {
        None => Ttl::NEVER,
        Some(secs) => Ttl::secs(secs),
    }
}

/// A reply that should carry a CAS token (`c` was asked for) but does not.
fn no_cas_token() -> BackendError {
    BackendError::Protocol("memcached did not return the CAS token".to_owned())
}

fn map_error(error: ClientError, timeout: Duration) -> BackendError {
    match error {
        ClientError::Io(e) => BackendError::Unreachable(e.to_string()),
        ClientError::Timeout { .. } => BackendError::Timeout(timeout),
        // Written but the outcome is unclear: classify by what went wrong.
        // A SERVER_ERROR reply arrives this way, and it does not mean the
        // node is down (the connection stays usable).
        ClientError::Ambiguous { source, .. } => match *source {
            ClientError::Server(message) => BackendError::Server(message),
            ClientError::Timeout { .. } => BackendError::Timeout(timeout),
            other => BackendError::Ambiguous(other.to_string()),
        },
        ClientError::Server(message) => BackendError::Server(message),
        other => BackendError::Protocol(other.to_string()),
    }
}

#[async_trait]
impl NodeBackend for MemcachedNode {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.client.get::<Vec<u8>>(key).await.map_err(|e| self.error(e))
    }

    async fn get_with_cas(&self, key: &str) -> Result<Option<Versioned>, BackendError> {
        let got = self
            .client
            .meta()
            .get(key)
            .meta(Meta::NONE.cas())
            .send()
            .await
            .map_err(|e| self.error(e))?;
        match got.value.filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(value) => Ok(Some(Versioned {
                value,
                cas: got.item.cas.ok_or_else(no_cas_token)?,
            })),
        }
    }

    async fn set(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<(), BackendError> {
        self.client
            .set(key, value, ttl(expiry))
            .await
            .map_err(|e| self.error(e))
    }

    async fn add(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<bool, BackendError> {
        self.client
            .add(key, value, ttl(expiry))
            .await
            .map_err(|e| self.error(e))
    }

    async fn add_with_cas(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<Option<u64>, BackendError> {
        self.set_returning_cas(key, value, expiry, WriteMode::Add).await
    }

    async fn delete_if_cas(&self, key: &str, cas: u64) -> Result<bool, BackendError> {
        let result = self
            .client
            .meta()
            .delete(key)
            .compare_cas(cas)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        Ok(result.applied())
    }

    async fn replace_if_cas(
        &self,
        key: &str,
        value: &[u8],
        cas: u64,
        expiry: Expiry,
    ) -> Result<Option<u64>, BackendError> {
        self.set_returning_cas(key, value, expiry, WriteMode::IfCas(cas)).await
    }

    async fn touch(&self, key: &str, expiry: Expiry) -> Result<bool, BackendError> {
        // `mg <key> T<ttl>` without value: one round trip that also says
        // whether the key exists (the high-level `touch` does not).
        let result = self
            .client
            .meta()
            .get(key)
            .touch(ttl(expiry))
            .without_value()
            .send()
            .await
            .map_err(|e| self.error(e))?;
        Ok(result.hit())
    }

    async fn get_and_touch_other(
        &self,
        key: &str,
        touch_key: &str,
        expiry: Expiry,
    ) -> Result<(Option<Versioned>, bool), BackendError> {
        let [got, touched] = self
            .batch([
                Get::new(key).meta(Meta::NONE.cas()).into(),
                Get::new(touch_key).touch(ttl(expiry)).without_value().into(),
            ])
            .await?;
        let unexpected = || BackendError::Protocol("batch answered with the wrong result kind".to_owned());
        let got = got.as_get().ok_or_else(unexpected)?;
        let value = match got.value.clone().filter(|v| !v.is_empty()) {
            None => None,
            Some(value) => Some(Versioned {
                value,
                cas: got.item.cas.ok_or_else(no_cas_token)?,
            }),
        };
        let exists = touched.as_get().ok_or_else(unexpected)?.hit();
        Ok((value, exists))
    }

    async fn set_pair_as(
        &self,
        first: Item<'_>,
        mode: WriteMode,
        second: Item<'_>,
    ) -> Result<WriteOutcome, BackendError> {
        let conditional = Set::new(first.key, first.value).ttl(ttl(first.expiry)).return_cas();
        let conditional = match mode {
            WriteMode::Set => conditional,
            WriteMode::Add => conditional.add(),
            WriteMode::IfCas(cas) => conditional.compare_cas(cas),
        };
        let [stored, _] = self
            .batch([
                conditional.into(),
                Set::new(second.key, second.value).ttl(ttl(second.expiry)).into(),
            ])
            .await?;
        let stored = stored
            .as_mutation()
            .ok_or_else(|| BackendError::Protocol("batch answered with the wrong result kind".to_owned()))?;
        match stored.status {
            MutationStatus::Applied => stored.cas.map(WriteOutcome::Stored).ok_or_else(no_cas_token),
            _ => Ok(WriteOutcome::Refused),
        }
    }

    async fn set_many(&self, items: &[Item<'_>]) -> Vec<Result<(), BackendError>> {
        let operations = items
            .iter()
            .map(|item| Set::new(item.key, item.value).ttl(ttl(item.expiry)).into());
        match self.client.meta().run_batch(operations).await {
            Err(error) => {
                let error = self.error(error);
                items.iter().map(|_| Err(error.clone())).collect()
            }
            Ok(results) => results
                .into_iter()
                .map(|result| match result {
                    Ok(result) if result.as_mutation().is_some_and(|m| m.applied()) => Ok(()),
                    Ok(result) => Err(BackendError::Protocol(format!("set not stored: {result:?}"))),
                    Err(error) => Err(self.error(error)),
                })
                .collect(),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let result = self.client.meta().delete(key).send().await.map_err(|e| self.error(e))?;
        Ok(result.applied())
    }
}
