//! [`NodeBackend`] kept in this process: the embedded default when no
//! memcached is configured, and a deterministic stand-in for unit tests
//! (it can be switched off to play a dead node, and counts operations).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::error::BackendError;
use crate::store::backend::node_backend::{Expiry, Item as StoreItem, NodeBackend, Versioned, WriteMode, WriteOutcome};

/// An in-process key/value store with memcached's expiry semantics.
/// Uses `tokio::time`, so tests with a paused clock control expiry.
#[derive(Debug, Default)]
pub struct InMemoryNode {
    items: Mutex<HashMap<String, Item>>,
    down: AtomicBool,
    /// Added latency per operation, in microseconds (plays a slow node).
    delay_us: AtomicU64,
    /// Source of CAS tokens.
    next_cas: AtomicU64,
    counts: OperationCounts,
}

#[derive(Debug)]
struct Item {
    value: Vec<u8>,
    expires_at: Option<Instant>,
    cas: u64,
}

impl Item {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// How many operations of each kind an [`InMemoryNode`] served.
#[derive(Debug, Default)]
pub struct OperationCounts {
    /// `get` calls.
    pub gets: AtomicU64,
    /// `set` and successful or failed `add` calls.
    pub sets: AtomicU64,
    /// `touch` calls.
    pub touches: AtomicU64,
    /// `delete` calls.
    pub deletes: AtomicU64,
}

fn deadline(expiry: Expiry, now: Instant) -> Option<Instant> {
    match expiry {
        Expiry::Never => None,
        // Beyond the clock's range: never.
        Expiry::After(d) => now.checked_add(d),
    }
}

impl InMemoryNode {
    /// An empty, available node.
    pub fn new() -> Self {
        Self::default()
    }

    /// Plays a dead node: while down, every operation fails as unreachable.
    #[cfg(any(test, feature = "test-util"))]
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Makes every operation take at least `delay` (a slow or frozen node).
    #[cfg(any(test, feature = "test-util"))]
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us
            .store(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Drops every item, like a memcached restart.
    #[cfg(any(test, feature = "test-util"))]
    pub fn clear(&self) {
        self.items.lock().clear();
    }

    /// The operation counters.
    #[cfg(any(test, feature = "test-util"))]
    pub fn counts(&self) -> &OperationCounts {
        &self.counts
    }

    /// Whether a live item exists under `key` (no counters touched).
    #[cfg(any(test, feature = "test-util"))]
    pub fn contains(&self, key: &str) -> bool {
        let now = Instant::now();
        self.items.lock().get(key).is_some_and(|item| item.live(now))
    }

    /// Live keys, sorted (for assertions).
    #[cfg(any(test, feature = "test-util"))]
    pub fn keys(&self) -> Vec<String> {
        let now = Instant::now();
        let mut keys: Vec<String> = self
            .items
            .lock()
            .iter()
            .filter(|(_, item)| item.live(now))
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Writes raw bytes under `key`, bypassing counters (to plant corrupt data).
    #[cfg(any(test, feature = "test-util"))]
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        self.items.lock().insert(
            key.to_owned(),
            Item {
                value: value.to_vec(),
                expires_at: None,
                cas: self.cas(),
            },
        );
    }

    /// Counts a get, then views the live item under `key`, if any.
    async fn read_live<T>(
        &self,
        key: &str,
        view: impl FnOnce(&Item, Instant) -> T + Send,
    ) -> Result<Option<T>, BackendError> {
        self.check(&self.counts.gets).await?;
        let now = Instant::now();
        Ok(self
            .items
            .lock()
            .get(key)
            .filter(|item| item.live(now))
            .map(|item| view(item, now)))
    }

    fn cas(&self) -> u64 {
        self.next_cas.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn check(&self, counter: &AtomicU64) -> Result<(), BackendError> {
        counter.fetch_add(1, Ordering::Relaxed);
        let delay = self.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        if self.down.load(Ordering::SeqCst) {
            Err(BackendError::Unreachable("in-memory node is switched off".to_owned()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl NodeBackend for InMemoryNode {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.check(&self.counts.gets).await?;
        let now = Instant::now();
        let mut items = self.items.lock();
        match items.get(key) {
            Some(item) if item.live(now) => Ok(Some(item.value.clone())),
            Some(_) => {
                items.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Vec<u8>, Option<Duration>)>, BackendError> {
        self.read_live(key, |item, now| {
            (item.value.clone(), item.expires_at.map(|at| at - now))
        })
        .await
    }

    async fn set(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<(), BackendError> {
        self.check(&self.counts.sets).await?;
        let now = Instant::now();
        self.items.lock().insert(
            key.to_owned(),
            Item {
                value: value.to_vec(),
                expires_at: deadline(expiry, now),
                cas: self.cas(),
            },
        );
        Ok(())
    }

    async fn add(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<bool, BackendError> {
        Ok(self.add_with_cas(key, value, expiry).await?.is_some())
    }

    async fn add_with_cas(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<Option<u64>, BackendError> {
        self.check(&self.counts.sets).await?;
        let now = Instant::now();
        let mut items = self.items.lock();
        if items.get(key).is_some_and(|item| item.live(now)) {
            return Ok(None);
        }
        let cas = self.cas();
        items.insert(
            key.to_owned(),
            Item {
                value: value.to_vec(),
                expires_at: deadline(expiry, now),
                cas,
            },
        );
        Ok(Some(cas))
    }

    async fn delete_if_cas(&self, key: &str, cas: u64) -> Result<bool, BackendError> {
        self.check(&self.counts.deletes).await?;
        let now = Instant::now();
        let mut items = self.items.lock();
        match items.get(key) {
            Some(item) if item.live(now) && item.cas == cas => {
                items.remove(key);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn get_with_cas(&self, key: &str) -> Result<Option<Versioned>, BackendError> {
        self.read_live(key, |item, _| Versioned {
            value: item.value.clone(),
            cas: item.cas,
        })
        .await
    }

    async fn get_and_touch(&self, key: &str, expiry: Expiry) -> Result<Option<Versioned>, BackendError> {
        self.check(&self.counts.touches).await?;
        let now = Instant::now();
        let mut items = self.items.lock();
        match items.get_mut(key) {
            Some(item) if item.live(now) => {
                item.expires_at = deadline(expiry, now);
                Ok(Some(Versioned {
                    value: item.value.clone(),
                    cas: item.cas,
                }))
            }
            _ => Ok(None),
        }
    }

    async fn store_as(&self, item: StoreItem<'_>, mode: WriteMode) -> Result<WriteOutcome, BackendError> {
        self.check(&self.counts.sets).await?;
        let now = Instant::now();
        let mut items = self.items.lock();
        let current = items.get(item.key).filter(|i| i.live(now)).map(|i| i.cas);
        let allowed = match mode {
            WriteMode::Set => true,
            WriteMode::Add => current.is_none(),
            WriteMode::IfCas(cas) => current == Some(cas),
        };
        if !allowed {
            return Ok(WriteOutcome::Refused);
        }
        let cas = self.cas();
        items.insert(
            item.key.to_owned(),
            Item {
                value: item.value.to_vec(),
                expires_at: deadline(item.expiry, now),
                cas,
            },
        );
        Ok(WriteOutcome::Stored(cas))
    }

    async fn replace_if_cas(
        &self,
        key: &str,
        value: &[u8],
        cas: u64,
        expiry: Expiry,
    ) -> Result<Option<u64>, BackendError> {
        self.check(&self.counts.sets).await?;
        let now = Instant::now();
        let mut items = self.items.lock();
        match items.get_mut(key) {
            Some(item) if item.live(now) && item.cas == cas => {
                let cas = self.cas();
                *item = Item {
                    value: value.to_vec(),
                    expires_at: deadline(expiry, now),
                    cas,
                };
                Ok(Some(cas))
            }
            _ => Ok(None),
        }
    }

    async fn touch(&self, key: &str, expiry: Expiry) -> Result<bool, BackendError> {
        self.check(&self.counts.touches).await?;
        let now = Instant::now();
        match self.items.lock().get_mut(key) {
            Some(item) if item.live(now) => {
                item.expires_at = deadline(expiry, now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.check(&self.counts.deletes).await?;
        let now = Instant::now();
        Ok(self.items.lock().remove(key).is_some_and(|item| item.live(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn behaves_like_memcached() {
        let node = InMemoryNode::new();
        assert_eq!(node.get("k").await.unwrap(), None);
        assert!(
            node.add("k", b"v", Expiry::After(Duration::from_secs(2)))
                .await
                .unwrap()
        );
        assert!(!node.add("k", b"w", Expiry::Never).await.unwrap());
        assert_eq!(node.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(node.touch("k", Expiry::After(Duration::from_secs(2))).await.unwrap());
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(node.contains("k"), "touch extended the expiry");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(node.get("k").await.unwrap(), None);
        assert!(!node.touch("k", Expiry::Never).await.unwrap());
        node.set("k", b"x", Expiry::Never).await.unwrap();
        assert!(node.delete("k").await.unwrap());
        assert!(!node.delete("k").await.unwrap());
    }

    #[tokio::test]
    async fn cas_guards_deletes() {
        let node = InMemoryNode::new();
        let cas = node.add_with_cas("lock", b"a", Expiry::Never).await.unwrap().unwrap();
        assert_eq!(node.add_with_cas("lock", b"b", Expiry::Never).await.unwrap(), None);
        assert!(node.touch("lock", Expiry::Never).await.unwrap());
        assert!(!node.delete_if_cas("lock", cas + 1).await.unwrap());
        assert!(
            node.delete_if_cas("lock", cas).await.unwrap(),
            "a touch keeps the token"
        );
        assert!(!node.delete_if_cas("lock", cas).await.unwrap());
        let cas = node.add_with_cas("lock", b"c", Expiry::Never).await.unwrap().unwrap();
        let renewed = node
            .replace_if_cas("lock", b"c", cas, Expiry::Never)
            .await
            .unwrap()
            .expect("ours: renewed");
        assert_ne!(renewed, cas, "a renewal changes the token");
        assert_eq!(
            node.replace_if_cas("lock", b"c", cas, Expiry::Never).await.unwrap(),
            None
        );
        assert!(node.delete_if_cas("lock", renewed).await.unwrap());
        assert_eq!(
            node.replace_if_cas("lock", b"c", renewed, Expiry::Never).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_switched_off_node_fails_every_operation() {
        let node = InMemoryNode::new();
        node.set_down(true);
        assert!(node.get("k").await.unwrap_err().is_unavailable());
        assert!(node.set("k", b"v", Expiry::Never).await.unwrap_err().is_unavailable());
        node.set_down(false);
        assert!(node.get("k").await.is_ok());
    }
}
