//! [`NodeBackend`] for a real memcached node, on this crate's own client
//! for memcached's meta text protocol.
//!
//! Each node has a few long-lived TCP connections; every connection is
//! shared by all concurrent operations ([`connection`]): what many requests
//! send at once goes out in one write and comes back in one read, so a busy
//! instance pays a fraction of a syscall and a wake-up per operation
//! instead of a full exchange on a pooled connection each. A connection
//! that breaks is replaced on the next operation, so a node that comes back
//! is used again without a restart. Every operation — dial included — is
//! bounded by the node's timeout.

mod connection;
mod protocol;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use self::connection::{Connection, ExchangeError};
use self::protocol::{
    GetFlags, MAX_VALUE_LEN, Reply, SetMode, Status, encode_delete, encode_get, encode_set, is_valid_key,
};
use crate::error::BackendError;
use crate::store::backend::node_backend::{Expiry, Item, NodeBackend, Versioned, WriteMode, WriteOutcome};

/// Connections per node. One carries all of an instance's traffic to the
/// node in the largest batches (measured: async sticky backups 0.61 × the
/// ceiling with one, 0.57 × with two; non-sticky rows equal). One memcached
/// worker thread serves it — far more operations per second than one
/// instance sends; many instances spread over the node's threads.
const CONNECTIONS_PER_NODE: usize = 1;

/// One memcached node.
#[derive(Clone)]
pub struct MemcachedNode {
    inner: Arc<Pool>,
}

struct Pool {
    address: String,
    timeout: Duration,
    slots: Vec<Slot>,
    next: AtomicUsize,
}

/// One connection of the pool, dialed when first needed and again after it broke.
#[derive(Default)]
struct Slot {
    current: parking_lot::Mutex<Option<Arc<Connection>>>,
    dialing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for MemcachedNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedNode")
            .field("address", &self.inner.address)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl MemcachedNode {
    /// A node at `address` (`host:port`). Nothing is dialed or resolved
    /// yet: the name is resolved at every dial, so a node whose name does
    /// not resolve yet (a container not started) is simply down until it
    /// does, and a node that comes back at another address is found. Every
    /// operation, and every dial, is bounded by `timeout`.
    ///
    /// # Errors
    /// None today; the signature leaves room for address checks.
    pub async fn connect(address: &str, timeout: Duration) -> Result<Self, BackendError> {
        Ok(Self {
            inner: Arc::new(Pool {
                address: address.to_owned(),
                timeout,
                slots: (0..CONNECTIONS_PER_NODE).map(|_| Slot::default()).collect(),
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// Sends `commands` and returns their `replies` replies, all within the
    /// node's timeout. A connection found broken (the node restarted, say)
    /// costs one more try on a new one when that is safe: the commands were
    /// never sent, or they only read.
    async fn exchange(&self, commands: Vec<u8>, replies: usize, mutating: bool) -> Result<Vec<Reply>, BackendError> {
        let timeout = self.inner.timeout;
        let commands = Bytes::from(commands);
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || BackendError::Timeout(timeout);
        let mut retried = false;
        loop {
            let connection = tokio::time::timeout_at(deadline, self.connection())
                .await
                .map_err(|_| timed_out())??;
            let started = tokio::time::Instant::now();
            let exchange = connection.exchange(commands.clone(), replies, mutating);
            let Ok(outcome) = tokio::time::timeout_at(deadline, exchange).await else {
                // Nothing at all answered on it meanwhile (a frozen node, a
                // dead path): dial afresh next time, and drop what callers
                // left queued on it. A slow node that answers keeps it.
                if !connection.answered_since(started) {
                    connection.close();
                }
                return Err(timed_out());
            };
            let error = match outcome {
                Ok(replies) => return Ok(replies),
                Err(error) => error,
            };
            let again = match &error {
                ExchangeError::NotSent => true,
                ExchangeError::Failed(BackendError::Unreachable(_)) => !mutating,
                ExchangeError::Failed(_) => false,
            };
            if !again || retried {
                return Err(match error {
                    ExchangeError::NotSent => {
                        BackendError::Unreachable("connection closed before the request was sent".to_owned())
                    }
                    ExchangeError::Failed(error) => error,
                });
            }
            retried = true;
        }
    }

    /// A live connection, round robin over the slots; dials one when the
    /// slot has none or its connection broke.
    async fn connection(&self) -> Result<Arc<Connection>, BackendError> {
        let pool = &*self.inner;
        let slot = &pool.slots[pool.next.fetch_add(1, Ordering::Relaxed) % pool.slots.len()];
        let live = || slot.current.lock().clone().filter(|c| !c.is_closed());
        if let Some(connection) = live() {
            return Ok(connection);
        }
        let _dialing = slot.dialing.lock().await;
        if let Some(connection) = live() {
            return Ok(connection);
        }
        let connection = Arc::new(Connection::dial(&pool.address).await?);
        *slot.current.lock() = Some(Arc::clone(&connection));
        Ok(connection)
    }

    /// One command, one reply.
    async fn one(&self, commands: Vec<u8>, mutating: bool) -> Result<Reply, BackendError> {
        let mut replies = self.exchange(commands, 1, mutating).await?;
        replies.pop().ok_or_else(|| protocol_error("no reply"))
    }

    /// `mg` with `flags`.
    async fn meta_get(&self, key: &str, flags: GetFlags) -> Result<Reply, BackendError> {
        let mut commands = Vec::with_capacity(key.len() + 16);
        encode_get(&mut commands, checked(key)?, flags);
        // Not "mutating" even with a touch: a TTL slid or not is harmless.
        self.one(commands, false).await.and_then(refuse_errors)
    }

    /// One `ms` as `mode` says, returning the new CAS token; `None` when
    /// it was not stored (add: the key exists; CAS: changed or gone).
    async fn set_returning_cas(&self, item: Item<'_>, mode: SetMode) -> Result<Option<u64>, BackendError> {
        let item = checked_item(item)?;
        let mut commands = Vec::with_capacity(item.key.len() + item.value.len() + 40);
        encode_set(&mut commands, item.key, item.value, item.expiry, mode, true);
        let reply = self.one(commands, true).await.and_then(refuse_errors)?;
        stored_cas(reply)
    }

    /// `md`, unconditional or on a CAS token; `true` when it deleted.
    async fn meta_delete(&self, key: &str, if_cas: Option<u64>) -> Result<bool, BackendError> {
        let mut commands = Vec::with_capacity(key.len() + 32);
        encode_delete(&mut commands, checked(key)?, if_cas);
        let reply = self.one(commands, true).await.and_then(refuse_errors)?;
        match reply.status {
            Status::Done => Ok(true),
            Status::NotFound | Status::Exists => Ok(false),
            other => Err(unexpected(&other)),
        }
    }
}

/// Parses `bytes` as a stream of replies until it ends or is refused.
#[cfg(feature = "fuzzing")]
pub(crate) fn parse_replies_for_fuzzing(mut bytes: &[u8]) {
    while let Ok(Some((_, used))) = protocol::parse_reply(bytes) {
        assert!(
            used > 0 && used <= bytes.len(),
            "a reply consumed {used} of {} bytes",
            bytes.len()
        );
        bytes = &bytes[used..];
    }
}

/// `key`, when memcached can take it; a protocol error otherwise (never sent).
fn checked(key: &str) -> Result<&str, BackendError> {
    if is_valid_key(key) {
        Ok(key)
    } else {
        Err(protocol_error(&format!("not a valid memcached key: {key:?}")))
    }
}

/// `item`, when memcached can take its key and value; a protocol error
/// otherwise (never sent).
fn checked_item(item: Item<'_>) -> Result<Item<'_>, BackendError> {
    checked(item.key)?;
    if item.value.len() >= MAX_VALUE_LEN {
        return Err(protocol_error(&format!(
            "a value of {} bytes is too large",
            item.value.len()
        )));
    }
    Ok(item)
}

/// An error reply as a [`BackendError`]; other replies pass.
fn refuse_errors(reply: Reply) -> Result<Reply, BackendError> {
    match reply.status {
        Status::ServerError(message) => Err(BackendError::Server(message)),
        Status::ClientError(message) => Err(protocol_error(&message)),
        _ => Ok(reply),
    }
}

/// A set's reply: the new CAS token when stored, `None` when refused.
fn stored_cas(reply: Reply) -> Result<Option<u64>, BackendError> {
    match reply.status {
        Status::Done => reply.cas.map(Some).ok_or_else(no_cas_token),
        Status::NotStored | Status::Exists | Status::NotFound => Ok(None),
        other => Err(unexpected(&other)),
    }
}

/// A get's value: `None` for a miss or an empty value.
fn hit_value(status: Status) -> Result<Option<Vec<u8>>, BackendError> {
    match status {
        Status::Value(value) if !value.is_empty() => Ok(Some(value)),
        Status::Value(_) | Status::Miss => Ok(None),
        other => Err(unexpected(&other)),
    }
}

/// A get's reply as a [`Versioned`]; a miss, or an empty value, is `None`.
fn versioned(reply: Reply) -> Result<Option<Versioned>, BackendError> {
    let Some(value) = hit_value(reply.status)? else {
        return Ok(None);
    };
    let cas = reply.cas.ok_or_else(no_cas_token)?;
    Ok(Some(Versioned { value, cas }))
}

fn protocol_error(message: &str) -> BackendError {
    BackendError::Protocol(message.to_owned())
}

fn unexpected(status: &Status) -> BackendError {
    protocol_error(&format!("unexpected reply {status:?}"))
}

/// A reply that should carry a CAS token (`c` was asked for) but does not.
fn no_cas_token() -> BackendError {
    protocol_error("memcached did not return the CAS token")
}

const WITH_CAS: GetFlags = GetFlags {
    value: true,
    cas: true,
    ttl: false,
    touch: None,
};

#[async_trait]
impl NodeBackend for MemcachedNode {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let flags = GetFlags {
            value: true,
            ..GetFlags::default()
        };
        hit_value(self.meta_get(key, flags).await?.status)
    }

    async fn get_with_cas(&self, key: &str) -> Result<Option<Versioned>, BackendError> {
        versioned(self.meta_get(key, WITH_CAS).await?)
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Vec<u8>, Option<Duration>)>, BackendError> {
        let flags = GetFlags {
            value: true,
            ttl: true,
            ..GetFlags::default()
        };
        let reply = self.meta_get(key, flags).await?;
        // `-1`: no expiry; a missing or other negative answer is read as
        // "no expiry known", which never expires a session by mistake.
        let ttl = reply
            .ttl
            .and_then(|secs| u64::try_from(secs).ok())
            .map(Duration::from_secs);
        Ok(hit_value(reply.status)?.map(|value| (value, ttl)))
    }

    async fn set(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<(), BackendError> {
        let mut outcomes = self.set_many(&[Item { key, value, expiry }]).await;
        outcomes.pop().unwrap_or_else(|| Err(protocol_error("no outcome")))
    }

    async fn add(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<bool, BackendError> {
        let stored = self
            .set_returning_cas(Item { key, value, expiry }, SetMode::Add)
            .await?;
        Ok(stored.is_some())
    }

    async fn add_with_cas(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<Option<u64>, BackendError> {
        self.set_returning_cas(Item { key, value, expiry }, SetMode::Add).await
    }

    async fn delete_if_cas(&self, key: &str, cas: u64) -> Result<bool, BackendError> {
        self.meta_delete(key, Some(cas)).await
    }

    async fn replace_if_cas(
        &self,
        key: &str,
        value: &[u8],
        cas: u64,
        expiry: Expiry,
    ) -> Result<Option<u64>, BackendError> {
        self.set_returning_cas(Item { key, value, expiry }, SetMode::IfCas(cas))
            .await
    }

    async fn touch(&self, key: &str, expiry: Expiry) -> Result<bool, BackendError> {
        // `mg <key> T<ttl>` without value: one round trip that also says
        // whether the key exists.
        let flags = GetFlags {
            touch: Some(expiry),
            ..GetFlags::default()
        };
        match self.meta_get(key, flags).await?.status {
            Status::Done | Status::Value(_) => Ok(true),
            Status::Miss => Ok(false),
            other => Err(unexpected(&other)),
        }
    }

    async fn get_and_touch(&self, key: &str, expiry: Expiry) -> Result<Option<Versioned>, BackendError> {
        let flags = GetFlags {
            touch: Some(expiry),
            ..WITH_CAS
        };
        versioned(self.meta_get(key, flags).await?)
    }

    async fn add_then_get_and_touch(
        &self,
        lock: Item<'_>,
        key: &str,
        expiry: Expiry,
    ) -> Result<(Option<u64>, Option<Versioned>), BackendError> {
        let lock = checked_item(lock)?;
        let mut commands = Vec::with_capacity(lock.key.len() + lock.value.len() + key.len() + 64);
        encode_set(&mut commands, lock.key, lock.value, lock.expiry, SetMode::Add, true);
        let flags = GetFlags {
            touch: Some(expiry),
            ..WITH_CAS
        };
        encode_get(&mut commands, checked(key)?, flags);
        let mut replies = self.exchange(commands, 2, true).await?.into_iter();
        let (Some(added), Some(got)) = (replies.next(), replies.next()) else {
            return Err(protocol_error("a pipelined pair answered too few replies"));
        };
        let added = stored_cas(refuse_errors(added)?)?;
        Ok((added, versioned(refuse_errors(got)?)?))
    }

    async fn store_as(&self, item: Item<'_>, mode: WriteMode) -> Result<WriteOutcome, BackendError> {
        let mode = match mode {
            WriteMode::Set => SetMode::Set,
            WriteMode::Add => SetMode::Add,
            WriteMode::IfCas(cas) => SetMode::IfCas(cas),
        };
        let stored = self.set_returning_cas(item, mode).await?;
        Ok(stored.map_or(WriteOutcome::Refused, WriteOutcome::Stored))
    }

    async fn set_many(&self, items: &[Item<'_>]) -> Vec<Result<(), BackendError>> {
        // Invalid keys are answered at once and never sent.
        let mut outcomes: Vec<Result<(), BackendError>> =
            items.iter().map(|item| checked_item(*item).map(drop)).collect();
        let length: usize = items.iter().map(|item| item.key.len() + item.value.len() + 32).sum();
        let mut commands = Vec::with_capacity(length);
        let mut sent = 0;
        for (item, outcome) in items.iter().zip(&outcomes) {
            if outcome.is_ok() {
                encode_set(&mut commands, item.key, item.value, item.expiry, SetMode::Set, false);
                sent += 1;
            }
        }
        if sent == 0 {
            return outcomes;
        }
        let replies = self.exchange(commands, sent, true).await;
        let mut replies = match replies {
            Ok(replies) => replies.into_iter(),
            Err(error) => {
                for outcome in outcomes.iter_mut().filter(|o| o.is_ok()) {
                    *outcome = Err(error.clone());
                }
                return outcomes;
            }
        };
        for outcome in outcomes.iter_mut().filter(|o| o.is_ok()) {
            *outcome = match replies.next().map(refuse_errors) {
                Some(Ok(Reply {
                    status: Status::Done, ..
                })) => Ok(()),
                Some(Ok(reply)) => Err(protocol_error(&format!("set not stored: {:?}", reply.status))),
                Some(Err(error)) => Err(error),
                None => Err(protocol_error("a pipelined batch answered too few replies")),
            };
        }
        outcomes
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.meta_delete(key, None).await
    }
}
