//! Where sessions are kept: the [`Store`] both modes write through — the
//! memcached nodes and their availability ([`nodes`], [`node`],
//! [`backend`]), every key name ([`keys`]), the stored bytes ([`codec`]:
//! [`envelope`] sealed by [`seal`]) and the writes retried when a node
//! answers again ([`repairs`]).

pub mod backend;
pub(crate) mod codec;
pub(crate) mod document;
pub(crate) mod envelope;
pub(crate) mod keys;
pub(crate) mod node;
pub(crate) mod node_state;
pub(crate) mod nodes;
pub(crate) mod repairs;
pub(crate) mod seal;

use std::collections::HashSet;
use std::sync::Arc;

use tokio::time::Instant;

use crate::error::{BackendError, Error};
use crate::session::record::SessionRecord;
use crate::stats::Stats;
use crate::store::backend::{Expiry, Item, WriteMode, WriteOutcome};
use crate::store::codec::Codec;
use crate::store::envelope::{Format, Stored};
use crate::store::keys::Keys;
use crate::store::nodes::{NodeIndex, Nodes};
use crate::store::repairs::{Action, Repairs};

/// The nodes, the key format and the codec: everything a mode needs to
/// read and write stored sessions, and nothing about either mode.
pub(crate) struct Store {
    pub(crate) nodes: Nodes,
    pub(crate) keys: Keys,
    pub(crate) codec: Codec,
    pub(crate) stats: Arc<Stats>,
    pub(crate) repairs: Repairs,
}

impl Store {
    pub(crate) fn new(nodes: Nodes, keys: Keys, codec: Codec, stats: Arc<Stats>) -> Self {
        Self {
            nodes,
            keys,
            codec,
            stats,
            repairs: Repairs::default(),
        }
    }

    /// The sticky session stored under `key` on `node`, from its bytes:
    /// opened (when sealed) and decoded. Anything else — garbage,
    /// truncated, foreign, tampered, from a newer version — is "no
    /// session", counted and logged, never a panic.
    pub(crate) fn read_record(&self, key: &str, bytes: &[u8], node: NodeIndex) -> Option<SessionRecord> {
        match self.read_stored(key, bytes, node, Format::Sticky)? {
            Stored::Session(record) => Some(record),
            // Sticky decoding never yields non-sticky markers or documents.
            Stored::Moved(_) | Stored::Gone | Stored::Document(_) => None,
        }
    }

    /// [`read_record`](Self::read_record) for a blob of `format`, which may
    /// also be a non-sticky forward record or a tombstone.
    pub(crate) fn read_stored(&self, key: &str, bytes: &[u8], node: NodeIndex, format: Format) -> Option<Stored> {
        match self.codec.decode(key, bytes, format) {
            Ok(stored) => Some(stored),
            Err(error) => {
                Stats::count(&self.stats.counters.decode_failures);
                tracing::warn!(node = %self.nodes.get(node).label(), %error, "a stored session was rejected; treating it as no session");
                None
            }
        }
    }

    /// "Node `index` is unavailable", as a request error (`503`).
    pub(crate) fn unavailable(&self, index: NodeIndex) -> Error {
        Error::Backend {
            node: self.nodes.get(index).label(),
            source: BackendError::Unreachable("the node is marked unavailable".to_owned()),
        }
    }

    /// Writes one blob to `node` as `mode` says; sealed for its key when
    /// configured.
    pub(crate) async fn write_copy(
        &self,
        node: NodeIndex,
        key: String,
        bytes: &[u8],
        expiry: Expiry,
        mode: WriteMode,
    ) -> Result<WriteOutcome, Error> {
        let sealed = self.codec.seal(&key, bytes);
        let item = Item {
            key: &key,
            value: &sealed,
            expiry,
        };
        self.nodes.get(node).call(|b| b.store_as(item, mode)).await
    }

    /// Writes `bytes` to `key` on `node` now (sealed for the key when
    /// configured), or, when the node is down or the write fails, queues it
    /// as a repair until `until` (as long as a copy it must cover could live).
    pub(crate) async fn write_or_repair(
        &self,
        node: NodeIndex,
        key: String,
        bytes: &[u8],
        expiry: Expiry,
        until: Instant,
    ) -> Result<(), Error> {
        let outcome = if self.nodes.get(node).is_available() {
            self.write_copy(node, key.clone(), bytes, expiry, WriteMode::Set)
                .await
                .map(drop)
        } else {
            Err(self.unavailable(node))
        };
        if outcome.is_err() {
            let sealed = self.codec.seal(&key, bytes).into_owned();
            self.remember_repair(node, key, Action::Set(sealed, expiry), until);
        }
        outcome
    }

    /// Starts a [`retry_repairs`](Self::retry_repairs) run in its own task
    /// (never delaying the caller) unless one is under way.
    pub(crate) fn spawn_repair_retry(self: &Arc<Self>) {
        if self.repairs.len() == 0 || !self.repairs.begin_run() {
            return;
        }
        let store = Arc::clone(self);
        tokio::spawn(async move {
            store.retry_repairs().await;
            store.repairs.end_run();
        });
    }

    /// Tries every due repair once (see [`repairs`]).
    pub(crate) async fn retry_repairs(&self) {
        let due = self.repairs.take_due(&self.nodes);
        if due.is_empty() {
            return;
        }
        let mut done = 0usize;
        let mut failing = HashSet::new();
        for repair in due {
            let node = self.nodes.get(repair.node);
            if failing.contains(&repair.node) || !node.is_available() {
                self.repairs.put_back(&self.stats, repair);
                continue;
            }
            let outcome = match &repair.action {
                Action::Set(bytes, expiry) => node.call(|b| b.set(&repair.key, bytes, *expiry)).await,
            };
            match outcome {
                Ok(()) => {
                    done += 1;
                    Stats::count(&self.stats.counters.repairs_done);
                }
                Err(_) => {
                    failing.insert(repair.node);
                    self.repairs.put_back(&self.stats, repair);
                }
            }
        }
        tracing::info!(done, "repairs retried");
    }

    /// Queues a write to do as soon as `node` answers (see [`repairs`]).
    pub(crate) fn remember_repair(&self, node: NodeIndex, key: String, action: Action, until: Instant) {
        self.remember_repair_from(node, key, action, Instant::now(), until);
    }

    /// [`remember_repair`](Self::remember_repair), not before `not_before`.
    pub(crate) fn remember_repair_from(
        &self,
        node: NodeIndex,
        key: String,
        action: Action,
        not_before: Instant,
        until: Instant,
    ) {
        // A removed node is gone for good: nothing owed to it can matter.
        if self.nodes.get(node).is_retired() {
            return;
        }
        self.repairs.remember(&self.stats, node, key, action, not_before, until);
    }
}
