//! One memcached node at run time: its backend, its availability and its
//! epoch (see [`crate::store::nodes`] for what they mean), and its
//! operations, each bounded by `operationTimeout` and teaching its
//! availability.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::error::{BackendError, Error};
use crate::store::backend::metered::Metered;
use crate::store::backend::{Expiry, NodeBackend};
use crate::store::node::NodeSpec;

pub(crate) struct Node {
    pub(crate) spec: NodeSpec,
    backend: Arc<dyn NodeBackend>,
    operation_timeout: Duration,
    /// Removed from the node list at run time: down for good, never probed
    /// or chosen; kept so the ids naming it still parse and relocate.
    retired: bool,
    /// In `failoverNodes` (changeable in place: see [`Nodes::apply`]).
    ///
    /// [`Nodes::apply`]: crate::store::nodes::Nodes::apply
    failover: AtomicBool,
    available: AtomicBool,
    /// When the current availability was observed (start of the operation).
    observed_at: Mutex<Instant>,
    epoch: AtomicU64,
    /// Whether the prober has placed its sentinel at least once.
    sentinel_placed: AtomicBool,
    /// How often the availability flipped.
    state_changes: AtomicU64,
    /// When (unix ms) it last went down, came back, or was found empty.
    changed_at_ms: AtomicU64,
    /// `memcached_sessions_backups_total{node, result}` of this node, by
    /// result, registered at first use.
    pub(crate) backup_counters: [OnceLock<metrics::Counter>; 3],
}

/// What a probe learned about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeOutcome {
    /// Answering, data intact (or first contact).
    Alive,
    /// Answering, but it lost its data since the last probe.
    LostData,
    /// Not answering.
    Down,
}

impl Node {
    pub(crate) fn label(&self) -> String {
        self.spec.label()
    }

    pub(crate) fn is_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    /// Removed from the node list (see [`Nodes::apply`]).
    pub(crate) fn is_retired(&self) -> bool {
        self.retired
    }

    pub(super) fn new(spec: NodeSpec, backend: Arc<dyn NodeBackend>, operation_timeout: Duration, epoch: u64) -> Self {
        let metered = Arc::new(Metered::new(backend, spec.label()));
        Self {
            backend: metered,
            failover: AtomicBool::new(spec.failover),
            spec,
            operation_timeout,
            retired: false,
            available: AtomicBool::new(true),
            observed_at: Mutex::new(Instant::now()),
            epoch: AtomicU64::new(epoch),
            sentinel_placed: AtomicBool::new(false),
            state_changes: AtomicU64::new(0),
            changed_at_ms: AtomicU64::new(0),
            backup_counters: Default::default(),
        }
    }

    /// This node, removed from the list: down for good.
    pub(super) fn retired(&self) -> Self {
        Self {
            backend: Arc::clone(&self.backend),
            spec: self.spec.clone(),
            operation_timeout: self.operation_timeout,
            retired: true,
            failover: AtomicBool::new(self.is_failover()),
            available: AtomicBool::new(false),
            observed_at: Mutex::new(Instant::now()),
            epoch: AtomicU64::new(self.epoch() + 1),
            sentinel_placed: AtomicBool::new(false),
            state_changes: AtomicU64::new(self.state_changes()),
            changed_at_ms: AtomicU64::new(crate::session::state::unix_ms(std::time::SystemTime::now())),
            backup_counters: Default::default(),
        }
    }

    /// Used only while no regular node is available (`failoverNodes`).
    pub(crate) fn is_failover(&self) -> bool {
        self.failover.load(Ordering::Acquire)
    }

    /// Changes the failover flag in place: operations in flight keep
    /// updating this same node's state.
    pub(super) fn set_failover(&self, failover: bool) {
        self.failover.store(failover, Ordering::Release);
    }

    /// This node's id at a new address (or back after being retired):
    /// `backend` dials it; as far as this instance knows it is empty there
    /// (its epoch increases, so what was backed up to it is written again).
    pub(super) fn moved(&self, spec: NodeSpec, backend: Arc<dyn NodeBackend>) -> Self {
        let node = Self::new(spec, backend, self.operation_timeout, self.epoch() + 1);
        node.state_changes.store(self.state_changes(), Ordering::Relaxed);
        node.note_change();
        node
    }

    /// When (unix ms) it last went down, came back, or was found empty.
    pub(super) fn changed_at_ms(&self) -> u64 {
        self.changed_at_ms.load(Ordering::Acquire)
    }

    /// How often its availability flipped.
    pub(super) fn state_changes(&self) -> u64 {
        self.state_changes.load(Ordering::Relaxed)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Remembers that the node's state or data changed now.
    pub(super) fn note_change(&self) {
        self.changed_at_ms.fetch_max(
            crate::session::state::unix_ms(std::time::SystemTime::now()),
            Ordering::AcqRel,
        );
    }

    /// Records an observation made by an operation that started at `started`.
    /// Returns `true` when the availability changed.
    pub(crate) fn observe(&self, available: bool, started: Instant) -> bool {
        if self.retired {
            return false;
        }
        let mut observed_at = self.observed_at.lock();
        if started < *observed_at {
            return false;
        }
        *observed_at = started;
        let before = self.available.swap(available, Ordering::AcqRel);
        if before != available {
            self.state_changes.fetch_add(1, Ordering::Relaxed);
            self.note_change();
            crate::telemetry::node_up(&self.label(), available);
            if available {
                tracing::info!(node = %self.label(), "memcached node is available again");
            } else {
                tracing::warn!(node = %self.label(), "memcached node is unavailable; its sessions will be relocated");
            }
        }
        before != available
    }

    /// Runs one backend operation bounded by `operationTimeout`, and learns
    /// availability from its outcome.
    pub(crate) async fn call<'a, T, F>(&'a self, op: impl FnOnce(&'a dyn NodeBackend) -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, BackendError>> + 'a,
    {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.operation_timeout, op(&*self.backend)).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Timeout(self.operation_timeout)),
        };
        match &result {
            Ok(_) => {
                self.observe(true, started);
            }
            Err(e) if e.is_unavailable() => {
                self.observe(false, started);
            }
            Err(_) => {}
        }
        result.map_err(|source| Error::Backend {
            node: self.label(),
            source,
        })
    }

    /// Checks the node and its sentinel key.
    pub(crate) async fn probe(&self, sentinel_key: &str) -> ProbeOutcome {
        match self.call(|b| b.get(sentinel_key)).await {
            Err(_) => ProbeOutcome::Down,
            Ok(Some(_)) => ProbeOutcome::Alive,
            Ok(None) => {
                if self.call(|b| b.set(sentinel_key, b"1", Expiry::Never)).await.is_err() {
                    return ProbeOutcome::Down;
                }
                if self.sentinel_placed.swap(true, Ordering::AcqRel) {
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                    self.note_change();
                    tracing::warn!(node = %self.label(), "memcached node lost its data (restarted empty?); re-writing its sessions");
                    ProbeOutcome::LostData
                } else {
                    ProbeOutcome::Alive
                }
            }
        }
    }
}
