//! A replicated memcached session store for [tower-sessions] (and so for
//! axum and axum-login): every session is kept on **two memcached nodes**,
//! so it survives the loss of any one node — killed, frozen, restarted
//! empty — without a lost session or a failed request after the first
//! timeout.
//!
//! ```no_run
//! use tower_sessions::{Expiry, SessionManagerLayer};
//! use tower_sessions_memcached::{Config, MemcachedStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::builder()
//!     .memcached_nodes("n1:10.0.0.1:11211,n2:10.0.0.2:11211,n3:10.0.0.3:11211")
//!     .build()?;
//! let store = MemcachedStore::start(config).await?;
//! let layer = SessionManagerLayer::new(store)
//!     .with_expiry(Expiry::OnInactivity(time::Duration::minutes(30)));
//! // axum::Router::new().route(...).layer(layer)
//! # Ok(()) }
//! ```
//!
//! # What it guarantees
//!
//! - **Placement**: a session's copies live on the first two available
//!   nodes of a rendezvous-hash ranking of its id over the configured
//!   nodes (tower-sessions ids cannot name a node). Every instance computes
//!   the same ranking; no coordination is needed.
//! - **A node dies**: every read and write goes to both copies at once; a
//!   node that fails is replaced by the next one in the ranking, so a
//!   request still succeeds, and the missing copy is re-created on the
//!   replacement at the session's next load. A node that comes back empty
//!   is refilled the same way; one that comes back with old copies (cut
//!   off, frozen) loses to the newer copy, which replaces them. A read
//!   that finds fewer than two copies also reads the next node of the
//!   ranking, where writes went while a replica was down.
//! - **Create** never overwrites: it is an atomic `add`, and a taken id
//!   (even one deleted lately) gets a new random id.
//! - **Delete** (logout, `cycle_id`, `flush`) leaves a deletion mark as
//!   long-lived as the session, so a node that missed it cannot bring the
//!   session back.
//! - **Expiry** is the record's `expiry_date` (memcached's TTL, absolute
//!   beyond 30 days); an expired record is never returned.
//! - **Values**: the session data is JSON inside the library's versioned,
//!   optionally sealed (`sessionEncryptionKeys`) envelope, so every
//!   `serde_json::Value` round-trips exactly. Bytes that do not decode are
//!   "no session", never a panic.
//!
//! # What it does not
//!
//! - **No locking**: like every tower-sessions store, concurrent requests
//!   of one session each save their own copy and the last one wins; a
//!   request that was already running when the session was deleted can
//!   save it again. Use `memcached-sessions`' own layer (non-sticky mode
//!   with `lockingMode`) when concurrent updates must not be lost.
//! - **No sticky primary**: every request reads memcached (two parallel
//!   reads). `memcached-sessions`' sticky mode keeps sessions in the app's
//!   memory and only backs them up.
//! - Copies that disagree after a fault are ordered by the writers'
//!   clocks: keep app instances' clocks synchronized (NTP).
//! - [`ExpiredDeletion`](tower_sessions_core::ExpiredDeletion) is not
//!   implemented: memcached expires items by their TTL itself.
//!
//! # Configuration
//!
//! [`Config`] is `memcached-sessions`' configuration, by the same setting
//! names (`Config::builder().set("memcachedNodes", …)`). The settings that
//! apply: `memcachedNodes` (without it: an embedded in-process store for
//! one process), `failoverNodes` (used only while fewer than two regular
//! nodes answer), `operationTimeout`, `nodeProbeInterval`,
//! `storageKeyPrefix`, `storageKeySecret`, `sessionEncryptionKeys` and
//! `maxSessionSize`. The others belong to `memcached-sessions`' own
//! session layer and are ignored here.
//!
//! [tower-sessions]: https://docs.rs/tower-sessions

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use memcached_sessions::replicated::{Created, ReplicatedStore};
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, SessionStore};

pub use memcached_sessions::replicated::ReplicatedStatistics;
pub use memcached_sessions::{Config, ConfigBuilder, ConfigError, NodeStatus};

/// How many fresh ids [`SessionStore::create`] tries before giving up
/// (with 128-bit random ids a second try is already unheard of).
const CREATE_ATTEMPTS: usize = 8;

/// The session store (see the [crate docs](crate)). Cheap to clone; clones
/// share connections and the node prober.
#[derive(Clone, Debug)]
pub struct MemcachedStore {
    replicated: ReplicatedStore,
}

impl MemcachedStore {
    /// Starts a store for `config` (must run inside a tokio runtime: it
    /// spawns the node prober). Nodes are dialed lazily; one that is down
    /// at start is simply marked unavailable by the first probe.
    ///
    /// # Errors
    /// When a node's address cannot be used, or `enabled` is false.
    pub async fn start(config: Config) -> Result<Self, memcached_sessions::Error> {
        Ok(Self::from_replicated(ReplicatedStore::start(config).await?))
    }

    /// A store on an existing [`ReplicatedStore`] (custom backends, tests).
    pub fn from_replicated(replicated: ReplicatedStore) -> Self {
        Self { replicated }
    }

    /// The nodes and whether each answers now (for health checks).
    pub fn nodes(&self) -> Vec<NodeStatus> {
        self.replicated.nodes()
    }

    /// The store's counters: copies re-created, stale copies replaced, …
    pub fn statistics(&self) -> ReplicatedStatistics {
        self.replicated.statistics()
    }

    /// The underlying replicated store (where a session's copies are, …).
    pub fn replicated(&self) -> &ReplicatedStore {
        &self.replicated
    }
}

#[async_trait]
impl SessionStore for MemcachedStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let body = encode(record)?;
        let expires_at = to_system_time(record.expiry_date);
        for _ in 0..CREATE_ATTEMPTS {
            match self
                .replicated
                .create(&record.id.to_string(), &body, expires_at)
                .await
                .map_err(store_error)?
            {
                Created::Stored => return Ok(()),
                Created::IdTaken => record.id = Id::default(),
            }
        }
        Err(session_store::Error::Backend(format!(
            "no free session id in {CREATE_ATTEMPTS} random tries"
        )))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let body = encode(record)?;
        self.replicated
            .save(&record.id.to_string(), &body, to_system_time(record.expiry_date))
            .await
            .map_err(store_error)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let Some(document) = self.replicated.load(&id.to_string()).await.map_err(store_error)? else {
            return Ok(None);
        };
        match serde_json::from_slice(&document.body) {
            Ok(data) => Ok(Some(Record {
                id: *id,
                data,
                expiry_date: to_offset_date_time(document.expires_at),
            })),
            Err(error) => {
                // Authentic bytes of this store that are not a data map: a
                // foreign writer under our prefix. No session, not a 500.
                tracing::warn!(%error, "a stored session's data is not a JSON object; treating it as no session");
                Ok(None)
            }
        }
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.replicated.delete(&id.to_string()).await.map_err(store_error)
    }
}

/// Deepest nesting of session data that reads back: serde_json's parser
/// stops at 128 levels (the data map itself is one).
const MAX_DEPTH: usize = 127;

/// The stored body: the session data as a JSON object. Data nested deeper
/// than JSON reading allows is refused here, not saved unreadable.
fn encode(record: &Record) -> session_store::Result<Vec<u8>> {
    let data: &HashMap<String, serde_json::Value> = &record.data;
    if data.values().any(|value| too_deep(value, MAX_DEPTH - 1)) {
        return Err(session_store::Error::Encode(format!(
            "session data is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    serde_json::to_vec(data).map_err(|error| session_store::Error::Encode(error.to_string()))
}

/// Whether `value` nests more than `levels` arrays or objects (a walk
/// with its own stack: no recursion on user data).
fn too_deep(value: &serde_json::Value, levels: usize) -> bool {
    use serde_json::Value;
    let mut pending = vec![(value, 0usize)];
    while let Some((value, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth + 1 > levels {
            return true;
        }
        pending.extend(children.map(|child| (child, depth + 1)));
    }
    false
}

fn store_error(error: memcached_sessions::Error) -> session_store::Error {
    if error.is_usage_error() {
        session_store::Error::Encode(error.to_string())
    } else {
        session_store::Error::Backend(error.to_string())
    }
}

/// `expiry_date` as a `SystemTime`; dates before 1970 are "already expired".
fn to_system_time(date: OffsetDateTime) -> SystemTime {
    let nanos = date.unix_timestamp_nanos();
    match u64::try_from(nanos) {
        Ok(nanos) => UNIX_EPOCH + Duration::from_nanos(nanos),
        Err(_) if nanos < 0 => UNIX_EPOCH,
        Err(_) => UNIX_EPOCH + Duration::from_nanos(u64::MAX),
    }
}

fn to_offset_date_time(time: SystemTime) -> OffsetDateTime {
    let nanos = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    i128::try_from(nanos)
        .ok()
        .and_then(|nanos| OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> serde_json::Value {
        (0..levels).fold(serde_json::Value::Null, |inner, _| serde_json::json!([inner]))
    }

    #[test]
    fn data_nested_deeper_than_json_reads_back_is_refused_at_save() {
        let mut record = Record {
            id: Id::default(),
            data: HashMap::from([("deep".to_owned(), nested(MAX_DEPTH - 1))]),
            expiry_date: OffsetDateTime::now_utc(),
        };
        let body = encode(&record).unwrap();
        let read: HashMap<String, serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(read, record.data, "the deepest accepted data reads back");
        record.data.insert("deeper".to_owned(), nested(MAX_DEPTH));
        assert!(
            serde_json::from_slice::<HashMap<String, serde_json::Value>>(&serde_json::to_vec(&record.data).unwrap())
                .is_err()
        );
        assert!(matches!(encode(&record), Err(session_store::Error::Encode(_))));
    }

    #[test]
    fn expiry_dates_convert_both_ways_to_the_millisecond() {
        let date = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap() + time::Duration::milliseconds(123);
        assert_eq!(to_offset_date_time(to_system_time(date)), date);
        let before_1970 = OffsetDateTime::from_unix_timestamp(-5).unwrap();
        assert_eq!(to_system_time(before_1970), UNIX_EPOCH);
        assert_eq!(to_system_time(OffsetDateTime::UNIX_EPOCH), UNIX_EPOCH);
    }
}
