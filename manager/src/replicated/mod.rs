//! A replicated document store on the memcached nodes: each document (a
//! session of another framework's session layer, say) is kept on **two
//! nodes** chosen by rendezvous hashing of its id, so it survives the loss
//! of any one node. This is what `tower-sessions-memcached` builds on; the
//! session manager itself ([`SessionManager`](crate::SessionManager)) does
//! not use it.
//!
//! # Contract
//!
//! - **Ids** are 1 to 128 printable ASCII characters (no space); the caller
//!   chooses them (random, unguessable). Loading an id that is not valid is
//!   "no document"; writing one is [`Error::InvalidDocumentId`].
//! - **Placement**: the copies go to the first two *available* nodes of
//!   the id's rendezvous ranking (regular nodes first, then
//!   `failoverNodes`). A node that fails an operation is replaced by the
//!   next available one at once, so an operation succeeds while any node
//!   answers.
//! - **Reads** ([`load`](ReplicatedStore::load)) read both copies at once
//!   and keep the one with the highest version (the later write); a
//!   replica that lacks the copy (a node restarted empty, or one that took
//!   over for a dead node), holds an older one (a node that was cut off and
//!   came back) or holds garbage gets the winner written back, guarded so
//!   that it never overwrites a write that landed meanwhile.
//! - **Create** ([`create`](ReplicatedStore::create)) is an atomic `add` on
//!   both replicas: an id that exists (or was deleted and its deletion mark
//!   is still there) is never overwritten — the call answers
//!   [`Created::IdTaken`] and the caller picks a new id.
//! - **Save** ([`save`](ReplicatedStore::save)) overwrites both copies
//!   (last writer wins: there is no locking).
//! - **Delete** ([`delete`](ReplicatedStore::delete)) replaces both copies
//!   with a deletion mark that lives as long as the document would have,
//!   so a stale copy on a node that missed the delete never brings the
//!   document back.
//! - **Expiry**: a document expires at its `expires_at` (memcached's TTL;
//!   absolute time beyond 30 days); an expired document is never returned.
//! - Everything stored is in the crate's versioned envelope, sealed with
//!   `sessionEncryptionKeys` when set; bytes that do not decode are
//!   "missing" (counted in `decode_failures`), never a panic.
//!
//! Copies disagree only after a fault; the later write is the one with the
//! higher version, which is the writer's clock (see the README: keep
//! instances' clocks synchronized). A read that finds fewer than two
//! copies also reads the next node of the ranking, where writes went while
//! a replica was down. One limit: a copy lives in memcached until its own
//! expiry, so when a save *shortens* a document's expiry, an older copy
//! with the longer expiry on a node cut off since then outlives the newer
//! one and can be read again once the newer copies are gone.
//!
//! # Configuration
//!
//! From the same [`Config`] as the session manager; the settings that
//! apply are `memcachedNodes` (without it: the embedded in-process store,
//! one process only), `failoverNodes`, `operationTimeout`,
//! `nodeProbeInterval`, `storageKeyPrefix`, `storageKeySecret`,
//! `sessionEncryptionKeys` and `maxSessionSize` (the largest body). The
//! others are the session manager's and are ignored.

mod fan_out;
mod placement;
mod reading;
mod shared;
#[cfg(test)]
mod tests;
mod versions;
mod writing;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::cluster::NodeStatus;
use crate::config::Config;
use crate::error::{ConfigError, Error};
use crate::session::id::SessionId;
use crate::stats::Stats;
use crate::store::Store;
use crate::store::backend::{NodeBackend, WriteMode};
use crate::store::codec::Codec;
use crate::store::envelope::{DocumentCopy, DocumentCopyRef};
use crate::store::keys::Keys;
use crate::store::nodes::Nodes;

use self::shared::{Counters, Shared};
use self::versions::VersionClock;
use self::writing::Written;

/// Longest accepted document id.
pub const MAX_DOCUMENT_ID_LEN: usize = 128;

/// A document as stored and loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The body, opaque to the store (a self-describing encoding such as
    /// JSON lets any value round-trip).
    pub body: Vec<u8>,
    /// When it expires (at a whole second, as memcached keeps time).
    pub expires_at: SystemTime,
}

/// What [`ReplicatedStore::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Created {
    /// Stored under the id.
    Stored,
    /// The id exists (or was deleted lately): nothing was stored.
    IdTaken,
}

/// Counters of a [`ReplicatedStore`] since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReplicatedStatistics {
    /// Copies written again to a replica that lacked them (a node
    /// restarted empty, or one that took over for a dead node).
    pub copies_recreated: u64,
    /// Older or undecodable copies replaced by the newer one.
    pub stale_copies_replaced: u64,
    /// Writes that reached only one replica (the other failed and no
    /// further node answered).
    pub single_copy_writes: u64,
    /// `create` calls that found their id taken.
    pub ids_taken: u64,
    /// Stored bytes that did not decode (or failed authentication).
    pub decode_failures: u64,
    /// The nodes considered available now.
    pub available_nodes: Vec<String>,
}

/// The replicated store (see the [module docs](self)). Cheap to clone;
/// clones share nodes, connections and the node prober, which stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct ReplicatedStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ReplicatedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedStore")
            .field("nodes", &self.nodes())
            .finish_non_exhaustive()
    }
}

impl ReplicatedStore {
    /// Starts a store for `config`: connects to the configured memcached
    /// nodes (dialed lazily; a node down at start is marked unavailable by
    /// the first probe), or uses the embedded in-process store when no node
    /// is configured. Must be called inside a tokio runtime (it spawns the
    /// node prober).
    ///
    /// # Errors
    /// [`Error::Config`] when `enabled` is false; [`Error::Backend`] when a
    /// node's address cannot be used.
    pub async fn start(config: Config) -> Result<Self, Error> {
        let backends = crate::store::backend::connect(config.nodes(), config.operation_timeout).await?;
        Ok(Self::with_backends(config, backends)?)
    }

    /// Starts a store on backends supplied by the caller, one per
    /// configured node in order (one for the embedded store when no node is
    /// configured): [`InMemoryNode`]s in tests, or a custom client.
    ///
    /// # Errors
    /// A [`ConfigError`] when the number of backends does not match the
    /// nodes, or `enabled` is false.
    pub fn with_backends(config: Config, backends: Vec<Arc<dyn NodeBackend>>) -> Result<Self, ConfigError> {
        if !config.enabled {
            return Err(ConfigError::new(
                "enabled",
                "the replicated store has no disabled mode: leave `enabled` at true",
            ));
        }
        let specs = config.node_specs();
        crate::store::backend::check_one_per_node(&specs, &backends)?;
        let keys = Keys::new(config.storage_key_prefix.clone(), config.key_hasher.clone());
        let instance_token = SessionId::generate(None, None).as_str()[..16].to_owned();
        let sentinel_key = keys.sentinel(&instance_token);
        let store = Store::new(
            Nodes::new(specs, backends, config.operation_timeout),
            keys,
            Codec::new(config.sealer.clone()),
            Arc::new(Stats::default()),
        );
        crate::telemetry::describe();
        let shared = Arc::new(Shared {
            store,
            counters: Counters::default(),
            clock: VersionClock::default(),
            max_body_size: config.max_session_size,
            sentinel_key,
            prober: Mutex::new(None),
        });
        let prober = tokio::spawn(probe_nodes(Arc::downgrade(&shared), config.node_probe_interval));
        *shared.prober.lock() = Some(prober);
        Ok(Self { shared })
    }

    /// The document stored under `id`, unless it is missing, deleted or
    /// expired (or `id` is not a valid id). Missing, older or undecodable
    /// copies found on the way are re-created before it returns.
    ///
    /// # Errors
    /// [`Error::Backend`] only when no node answered.
    pub async fn load(&self, id: &str) -> Result<Option<Document>, Error> {
        if !is_valid_id(id) {
            return Ok(None);
        }
        let key = self.shared.store.keys.document(id);
        let reading = reading::read(&self.shared, &key).await?;
        let now_ms = now_ms();
        reading::repair(&self.shared, &key, &reading, now_ms).await;
        Ok(reading.winner().and_then(|winner| {
            let body = winner.body.as_ref().filter(|_| winner.expires_at_ms > now_ms)?;
            Some(Document {
                body: body.clone(),
                expires_at: system_time(winner.expires_at_ms),
            })
        }))
    }

    /// Stores a new document under `id` unless the id exists (or was
    /// deleted lately, so its deletion mark is still there): then nothing
    /// is stored and the answer is [`Created::IdTaken`]. A document that
    /// has already expired is not stored ([`Created::Stored`]: it would
    /// expire at once).
    ///
    /// # Errors
    /// [`Error::InvalidDocumentId`], [`Error::DocumentTooLarge`], or
    /// [`Error::Backend`] when no node answered.
    pub async fn create(&self, id: &str, body: &[u8], expires_at: SystemTime) -> Result<Created, Error> {
        self.check(id, body)?;
        let Some(remaining) = remaining(expires_at) else {
            return Ok(Created::Stored);
        };
        let key = self.shared.store.keys.document(id);
        let copy = DocumentCopyRef {
            version: self.shared.clock.next(),
            expires_at_ms: unix_ms(expires_at),
            body: Some(body),
        };
        match writing::write(&self.shared, &key, copy, remaining, WriteMode::Add).await? {
            Written::Stored(_) => Ok(Created::Stored),
            Written::Taken => {
                self.shared.counters.count_id_taken();
                Ok(Created::IdTaken)
            }
        }
    }

    /// Stores `body` under `id`, replacing what is there (last writer
    /// wins). A document that has already expired is deleted instead.
    ///
    /// # Errors
    /// [`Error::InvalidDocumentId`], [`Error::DocumentTooLarge`], or
    /// [`Error::Backend`] when no node answered.
    pub async fn save(&self, id: &str, body: &[u8], expires_at: SystemTime) -> Result<(), Error> {
        self.check(id, body)?;
        let Some(remaining) = remaining(expires_at) else {
            return self.delete(id).await;
        };
        let key = self.shared.store.keys.document(id);
        let copy = DocumentCopyRef {
            version: self.shared.clock.next(),
            expires_at_ms: unix_ms(expires_at),
            body: Some(body),
        };
        writing::write(&self.shared, &key, copy, remaining, WriteMode::Set).await?;
        Ok(())
    }

    /// Deletes the document under `id`: its copies are replaced by a
    /// deletion mark that lives as long as the longest-lived copy found,
    /// so a node that missed the delete cannot bring it back. Nothing is
    /// written when no copy exists.
    ///
    /// # Errors
    /// [`Error::Backend`] when no node answered.
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        if !is_valid_id(id) {
            return Ok(());
        }
        let key = self.shared.store.keys.document(id);
        let reading = reading::read(&self.shared, &key).await?;
        let Some(expires_at_ms) = reading.mark_expiry_ms() else {
            return Ok(());
        };
        let Some(remaining) = remaining(system_time(expires_at_ms)) else {
            return Ok(());
        };
        let mark = DocumentCopy {
            version: self.shared.clock.next(),
            expires_at_ms,
            body: None,
        };
        writing::write(&self.shared, &key, mark.as_ref(), remaining, WriteMode::Set).await?;
        reading::mark_beyond_replicas(&self.shared, &key, &reading, &mark, now_ms()).await;
        Ok(())
    }

    /// Every configured node and whether it answers now.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        crate::cluster::node_statuses(&self.shared.store.nodes)
    }

    /// The nodes that hold the copies of `id` now (the first two available
    /// nodes of its ranking), for status pages and tests.
    pub fn replicas_of(&self, id: &str) -> Vec<String> {
        if !is_valid_id(id) {
            return Vec::new();
        }
        let key = self.shared.store.keys.document(id);
        placement::ranking(&self.shared.store.nodes, &key)
            .into_iter()
            .filter(|node| node.is_available())
            .take(placement::REPLICAS)
            .map(|node| node.label())
            .collect()
    }

    /// The memcached key the copies of `id` are stored under (the same on
    /// every node), for tests and operators.
    pub fn storage_key(&self, id: &str) -> Option<String> {
        is_valid_id(id).then(|| self.shared.store.keys.document(id))
    }

    /// A snapshot of the counters.
    pub fn statistics(&self) -> ReplicatedStatistics {
        let counters = &self.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ReplicatedStatistics {
            copies_recreated: load(&counters.copies_recreated),
            stale_copies_replaced: load(&counters.stale_copies_replaced),
            single_copy_writes: load(&counters.single_copy_writes),
            ids_taken: load(&counters.ids_taken),
            decode_failures: load(&self.shared.store.stats.counters.decode_failures),
            available_nodes: self.shared.store.nodes.available_labels(),
        }
    }

    fn check(&self, id: &str, body: &[u8]) -> Result<(), Error> {
        if !is_valid_id(id) {
            return Err(Error::InvalidDocumentId { len: id.len() });
        }
        if body.len() > self.shared.max_body_size {
            return Err(Error::DocumentTooLarge {
                size: body.len(),
                limit: self.shared.max_body_size,
            });
        }
        Ok(())
    }
}

/// 1 to [`MAX_DOCUMENT_ID_LEN`] printable ASCII characters, no space: safe
/// inside a memcached key.
fn is_valid_id(id: &str) -> bool {
    (1..=MAX_DOCUMENT_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

fn unix_ms(time: SystemTime) -> u64 {
    crate::session::state::unix_ms(time)
}

/// `ms` after the unix epoch; past what `SystemTime` holds on the platform
/// (bytes read back can say anything), the end of year 9999.
fn system_time(ms: u64) -> SystemTime {
    const END_OF_9999: Duration = Duration::from_secs(253_402_300_799);
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH + END_OF_9999)
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// The time left until `expires_at`; `None` when it has passed.
fn remaining(expires_at: SystemTime) -> Option<Duration> {
    expires_at
        .duration_since(SystemTime::now())
        .ok()
        .filter(|left| !left.is_zero())
}

/// Probes every node every `interval` (availability: a node marked down
/// comes back here); stops when the store is dropped.
async fn probe_nodes(shared: std::sync::Weak<Shared>, interval: Duration) {
    crate::periodic::every(shared, interval, |shared| {
        let probes = shared.store.nodes.probe_all(&shared.sentinel_key);
        async move {
            probes.await;
        }
    })
    .await;
}
