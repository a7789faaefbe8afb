//! The configured memcached nodes at run time: each with its backend, its
//! availability and its epoch.
//!
//! **Availability** is a per-node flag with the time it was observed. It is
//! updated by the prober (every `node_probe_interval`, 1 s by default, like
//! MSM's 1 s availability cache) and by the outcome of every real
//! operation. The request path only reads it and never waits for a probe.
//! An observation older than the current state is ignored, so a slow probe
//! that started before a failure cannot mark a dead node alive.
//!
//! **Epoch**: the prober keeps a sentinel key (one per manager instance) on
//! every node. When the node answers but the sentinel is gone, the node lost
//! its data (restarted empty, flushed): its epoch increases, and every
//! session backed up under an older epoch is written again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::error::{BackendError, Error};
use crate::session::id::SessionId;
use crate::session::node_id::NodeId;
use crate::store::backend::metered::Metered;
use crate::store::backend::{Expiry, NodeBackend};
use crate::store::node::NodeSpec;

/// Index of a node in the configured order.
pub(crate) type NodeIndex = usize;

pub(crate) struct Node {
    pub(crate) spec: NodeSpec,
    backend: Arc<dyn NodeBackend>,
    operation_timeout: Duration,
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

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Remembers that the node's state or data changed now.
    fn note_change(&self) {
        self.changed_at_ms.fetch_max(
            crate::session::state::unix_ms(std::time::SystemTime::now()),
            Ordering::AcqRel,
        );
    }

    /// Records an observation made by an operation that started at `started`.
    /// Returns `true` when the availability changed.
    pub(crate) fn observe(&self, available: bool, started: Instant) -> bool {
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

/// All configured nodes.
pub(crate) struct Nodes {
    nodes: Vec<Node>,
    /// A single node without id: session ids carry no node suffix.
    anonymous: bool,
}

impl Nodes {
    pub(crate) fn new(specs: Vec<NodeSpec>, backends: Vec<Arc<dyn NodeBackend>>, operation_timeout: Duration) -> Self {
        let anonymous = specs.len() == 1 && specs[0].id.is_none();
        let now = Instant::now();
        let nodes = specs
            .into_iter()
            .zip(backends)
            .map(|(spec, backend)| Node {
                backend: Arc::new(Metered::new(backend, spec.label())),
                spec,
                operation_timeout,
                available: AtomicBool::new(true),
                observed_at: Mutex::new(now),
                epoch: AtomicU64::new(0),
                sentinel_placed: AtomicBool::new(false),
                state_changes: AtomicU64::new(0),
                changed_at_ms: AtomicU64::new(0),
            })
            .collect();
        Self { nodes, anonymous }
    }

    /// When (unix ms) any node last went down, came back, or was found
    /// empty: copies written before may be missing or in the wrong place.
    pub(crate) fn last_change_ms(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.changed_at_ms.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    /// No nodes at all (`enabled = false`).
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    pub(crate) fn get(&self, index: NodeIndex) -> &Node {
        &self.nodes[index]
    }

    pub(crate) fn is_known(&self, id: &NodeId) -> bool {
        self.index_of(id).is_some()
    }

    fn index_of(&self, id: &NodeId) -> Option<NodeIndex> {
        self.nodes.iter().position(|n| n.spec.id.as_ref() == Some(id))
    }

    /// The node that stores the session with this id, if any.
    pub(crate) fn node_of(&self, id: &SessionId) -> Option<NodeIndex> {
        if self.anonymous {
            return Some(0);
        }
        id.node().and_then(|node| self.index_of(node))
    }

    /// The node id to put into a new session id: a random available regular
    /// node; a random available failover node only when no regular node is
    /// available; `None` when nothing is available (or the node is anonymous).
    pub(crate) fn choose(&self) -> Option<&NodeId> {
        if self.anonymous {
            return None;
        }
        let pick = |failover: bool| {
            let candidates: Vec<&Node> = self
                .nodes
                .iter()
                .filter(|n| n.spec.failover == failover && n.is_available())
                .collect();
            (!candidates.is_empty()).then(|| candidates[random_below(candidates.len())])
        };
        pick(false).or_else(|| pick(true)).and_then(|n| n.spec.id.as_ref())
    }

    /// Whether the session should move to another node: its node is down,
    /// or it sits on a failover node while a regular node is available, or
    /// it has no node while one is available.
    pub(crate) fn should_relocate(&self, id: &SessionId) -> bool {
        if self.anonymous || self.nodes.is_empty() {
            return false;
        }
        let regular_available = || self.nodes.iter().any(|n| !n.spec.failover && n.is_available());
        match self.node_of(id) {
            None => self.nodes.iter().any(Node::is_available),
            Some(index) => {
                let node = &self.nodes[index];
                !node.is_available() || (node.spec.failover && regular_available())
            }
        }
    }

    /// Availability flips observed on all nodes.
    pub(crate) fn state_changes(&self) -> u64 {
        self.nodes.iter().map(|n| n.state_changes.load(Ordering::Relaxed)).sum()
    }

    /// The other nodes in configured order after `index`, wrapping around:
    /// where non-sticky backups go and where they are looked for.
    pub(crate) fn ring_after(&self, index: NodeIndex) -> impl Iterator<Item = NodeIndex> + '_ {
        let n = self.nodes.len();
        (1..n).map(move |step| (index + step) % n)
    }

    /// The first available node after `index` (the backup node), if any.
    pub(crate) fn next_available(&self, index: NodeIndex) -> Option<NodeIndex> {
        self.ring_after(index).find(|&i| self.nodes[i].is_available())
    }

    /// `index` if available, else the first available node after it: where
    /// a session's primary copy lives (or moves to) and where its lock is.
    pub(crate) fn home_of(&self, index: NodeIndex) -> Option<NodeIndex> {
        if self.nodes[index].is_available() {
            Some(index)
        } else {
            self.next_available(index)
        }
    }

    /// Ids of the nodes currently considered available.
    pub(crate) fn available_labels(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.is_available())
            .map(Node::label)
            .collect()
    }
}

/// A uniformly random index below `n` (n > 0), from the OS CSPRNG.
fn random_below(n: usize) -> usize {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
    (u64::from_le_bytes(bytes) % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::InMemoryNode;
    use crate::store::node::parse_nodes;

    fn nodes(spec: &str, failover: &str) -> (Nodes, Vec<Arc<InMemoryNode>>) {
        let specs = parse_nodes(spec, failover).unwrap();
        let memory: Vec<Arc<InMemoryNode>> = specs.iter().map(|_| Arc::new(InMemoryNode::new())).collect();
        let backends = memory.iter().map(|m| m.clone() as Arc<dyn NodeBackend>).collect();
        (Nodes::new(specs, backends, Duration::from_millis(100)), memory)
    }

    fn set_available(nodes: &Nodes, index: usize, available: bool) {
        nodes.get(index).observe(available, Instant::now());
    }

    #[tokio::test]
    async fn new_sessions_prefer_regular_nodes() {
        let (nodes, _) = nodes("n1:h:1 n2:h:2 n3:h:3", "n3");
        for _ in 0..50 {
            assert_ne!(nodes.choose().unwrap().as_str(), "n3");
        }
        set_available(&nodes, 0, false);
        set_available(&nodes, 1, false);
        assert_eq!(nodes.choose().unwrap().as_str(), "n3");
        set_available(&nodes, 2, false);
        assert_eq!(nodes.choose(), None);
    }

    #[tokio::test]
    async fn relocation_rules() {
        let (nodes, _) = nodes("n1:h:1 n2:h:2", "n2");
        let on = |n: &str| SessionId::generate(Some(&NodeId::parse(n).unwrap()), None);
        assert!(!nodes.should_relocate(&on("n1")));
        assert!(
            nodes.should_relocate(&on("n2")),
            "leave the failover node when a regular one is up"
        );
        assert!(
            nodes.should_relocate(&SessionId::generate(None, None)),
            "a node-less id gets a node"
        );
        set_available(&nodes, 0, false);
        assert!(nodes.should_relocate(&on("n1")));
        assert!(
            !nodes.should_relocate(&on("n2")),
            "stay on the failover node while n1 is down"
        );
    }

    #[tokio::test]
    async fn the_ring_skips_unavailable_nodes_and_wraps() {
        let (nodes, _) = nodes("n1:h:1 n2:h:2 n3:h:3", "");
        assert_eq!(nodes.ring_after(2).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(nodes.next_available(0), Some(1));
        set_available(&nodes, 1, false);
        assert_eq!(nodes.next_available(0), Some(2), "backup goes past a dead next node");
        assert_eq!(nodes.home_of(1), Some(2));
        assert_eq!(nodes.home_of(0), Some(0));
        set_available(&nodes, 2, false);
        set_available(&nodes, 0, false);
        assert_eq!(nodes.home_of(0), None);
    }

    #[tokio::test]
    async fn anonymous_node_never_relocates() {
        let (nodes, _) = nodes("localhost:11211", "");
        let id = SessionId::generate(None, None);
        assert_eq!(nodes.node_of(&id), Some(0));
        assert!(!nodes.should_relocate(&id));
        assert_eq!(nodes.choose(), None);
    }

    #[tokio::test]
    async fn operations_update_availability_and_stale_observations_are_ignored() {
        let (nodes, memory) = nodes("n1:h:1 n2:h:2", "");
        let before = Instant::now();
        memory[0].set_down(true);
        assert!(nodes.get(0).call(|b| b.get("k")).await.unwrap_err().is_unavailable());
        assert!(!nodes.get(0).is_available());
        assert!(!nodes.get(0).observe(true, before - Duration::from_millis(1)));
        assert!(!nodes.get(0).is_available(), "an older observation does not win");
        memory[0].set_down(false);
        nodes.get(0).call(|b| b.get("k")).await.unwrap();
        assert!(nodes.get(0).is_available());
    }

    #[tokio::test]
    async fn probe_detects_a_node_that_lost_its_data() {
        let (nodes, memory) = nodes("n1:h:1 n2:h:2", "");
        let node = nodes.get(0);
        assert_eq!(node.probe("sentinel").await, ProbeOutcome::Alive);
        assert_eq!(node.probe("sentinel").await, ProbeOutcome::Alive);
        assert_eq!(node.epoch(), 0);
        memory[0].clear();
        assert_eq!(node.probe("sentinel").await, ProbeOutcome::LostData);
        assert_eq!(node.epoch(), 1);
        memory[0].set_down(true);
        assert_eq!(node.probe("sentinel").await, ProbeOutcome::Down);
        assert!(!node.is_available());
    }
}
