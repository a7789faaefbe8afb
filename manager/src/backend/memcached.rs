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

/// A meta get's answer as a [`Versioned`]; an empty value is a miss.
fn versioned(value: Option<Vec<u8>>, cas: Option<u64>) -> Result<Option<Versioned>, BackendError> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(value) => Ok(Some(Versioned {
            value,
            cas: cas.ok_or_else(no_cas_token)?,
        })),
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
        versioned(got.value, got.item.cas)
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Vec<u8>, Option<Duration>)>, BackendError> {
        let got = self
            .client
            .meta()
            .get(key)
            .meta(Meta::NONE.ttl())
            .send()
            .await
            .map_err(|e| self.error(e))?;
        let Some(value) = got.value.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        // `-1`: no expiry; a missing or other negative answer is read as
        // "no expiry known", which never expires a session by mistake.
        let ttl = got
            .item
            .ttl
            .and_then(|secs| u64::try_from(secs).ok())
            .map(Duration::from_secs);
        Ok(Some((value, ttl)))
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

    async fn get_and_touch(&self, key: &str, expiry: Expiry) -> Result<Option<Versioned>, BackendError> {
        let got = self
            .client
            .meta()
            .get(key)
            .meta(Meta::NONE.cas())
            .touch(ttl(expiry))
            .send()
            .await
            .map_err(|e| self.error(e))?;
        versioned(got.value, got.item.cas)
    }

    async fn add_then_get_and_touch(
        &self,
        lock: Item<'_>,
        key: &str,
        expiry: Expiry,
    ) -> Result<(Option<u64>, Option<Versioned>), BackendError> {
        let [added, got] = self
            .batch([
                Set::new(lock.key, lock.value)
                    .ttl(ttl(lock.expiry))
                    .return_cas()
                    .add()
                    .into(),
                Get::new(key).meta(Meta::NONE.cas()).touch(ttl(expiry)).into(),
            ])
            .await?;
        let unexpected = || BackendError::Protocol("batch answered with the wrong result kind".to_owned());
        let added = added.as_mutation().ok_or_else(unexpected)?;
        let added = match added.status {
            MutationStatus::Applied => Some(added.cas.ok_or_else(no_cas_token)?),
            _ => None,
        };
        let got = got.as_get().ok_or_else(unexpected)?;
        Ok((added, versioned(got.value.clone(), got.item.cas)?))
    }

    async fn store_as(&self, item: Item<'_>, mode: WriteMode) -> Result<WriteOutcome, BackendError> {
        let stored = self.set_returning_cas(item.key, item.value, item.expiry, mode).await?;
        Ok(stored.map_or(WriteOutcome::Refused, WriteOutcome::Stored))
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
