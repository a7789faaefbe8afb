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
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::error::ConfigError;
use crate::session::id::SessionId;
use crate::session::node_id::NodeId;
use crate::store::backend::NodeBackend;
use crate::store::node::NodeSpec;
pub(crate) use crate::store::node_state::{Node, ProbeOutcome};

/// Index of a node in the configured order.
pub(crate) type NodeIndex = usize;

/// All configured nodes. The list changes only through
/// [`apply`](Self::apply) and only by appending, replacing or retiring a
/// slot: a node's index never changes, so an index remembered anywhere
/// (repairs, locks) never points at another node. Work in flight against a
/// node that moved meanwhile fails as against a dead node (a lock held
/// there is lost: its request is answered 503, nothing is saved).
pub(crate) struct Nodes {
    slots: RwLock<Arc<Vec<Arc<Node>>>>,
    /// A single node without id: session ids carry no node suffix.
    anonymous: bool,
    operation_timeout: Duration,
    /// When [`apply`](Self::apply) last added a node: the ring changed, so
    /// backup copies written before may not be where it says now.
    added_at: Mutex<Option<Instant>>,
}

/// What [`Nodes::apply`] changed, by node index.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct NodeChanges {
    pub(crate) added: Vec<NodeIndex>,
    /// Same id, new address (or back after being retired): an empty node
    /// as far as this instance knows.
    pub(crate) moved: Vec<NodeIndex>,
    pub(crate) retired: Vec<NodeIndex>,
}

impl Nodes {
    pub(crate) fn new(specs: Vec<NodeSpec>, backends: Vec<Arc<dyn NodeBackend>>, operation_timeout: Duration) -> Self {
        let anonymous = specs.len() == 1 && specs[0].id.is_none();
        let nodes = specs
            .into_iter()
            .zip(backends)
            .map(|(spec, backend)| Arc::new(Node::new(spec, backend, operation_timeout, 0)))
            .collect();
        Self {
            slots: RwLock::new(Arc::new(nodes)),
            anonymous,
            operation_timeout,
            added_at: Mutex::new(None),
        }
    }

    /// The node list now (cheap: one `Arc` clone).
    fn snapshot(&self) -> Arc<Vec<Arc<Node>>> {
        Arc::clone(&self.slots.read())
    }

    /// Makes `specs` the node list: a node whose id is new is appended, a
    /// known id with another address (or failover flag) replaces its slot
    /// (a moved node starts empty: its epoch increases, so the sessions
    /// backed up to it are written again), and a node missing from `specs`
    /// is retired — down for good, like a dead node: its sessions relocate
    /// and the ids naming it still parse. `connect` makes the backend of a
    /// new or moved node. Refused (nothing changes) for a single anonymous
    /// node, an anonymous spec, an empty list, or the embedded store.
    pub(crate) fn apply(
        &self,
        specs: Vec<NodeSpec>,
        connect: impl Fn(&NodeSpec) -> Arc<dyn NodeBackend>,
    ) -> Result<NodeChanges, ConfigError> {
        if self.anonymous || specs.iter().any(|s| s.id.is_none()) {
            return Err(ConfigError::new(
                "memcachedNodes",
                "only nodes with ids (id:host:port) can be changed at run time",
            ));
        }
        let mut slots = self.slots.write();
        if slots.is_empty() || slots.iter().any(|n| n.spec.port == 0) {
            return Err(ConfigError::new(
                "memcachedNodes",
                "the embedded in-process store cannot be changed to memcached nodes at run time",
            ));
        }
        if specs.is_empty() {
            return Err(ConfigError::new("memcachedNodes", "at least one node is needed"));
        }
        let mut next: Vec<Arc<Node>> = slots.as_ref().clone();
        let mut changes = NodeChanges::default();
        for (index, node) in next.iter_mut().enumerate() {
            match specs.iter().find(|s| s.id == node.spec.id) {
                None if !node.is_retired() => {
                    *node = Arc::new(node.retired());
                    changes.retired.push(index);
                }
                None => {}
                Some(spec) if node.is_retired() || spec.host != node.spec.host || spec.port != node.spec.port => {
                    *node = Arc::new(node.moved(spec.clone(), connect(spec)));
                    changes.moved.push(index);
                }
                Some(spec) => node.set_failover(spec.failover),
            }
        }
        for spec in &specs {
            if !next.iter().any(|n| n.spec.id == spec.id) {
                changes.added.push(next.len());
                next.push(Arc::new(Node::new(
                    spec.clone(),
                    connect(spec),
                    self.operation_timeout,
                    0,
                )));
            }
        }
        *slots = Arc::new(next);
        if !changes.added.is_empty() {
            *self.added_at.lock() = Some(Instant::now());
        }
        Ok(changes)
    }

    /// The bound on every operation of a node.
    pub(crate) fn operation_timeout(&self) -> Duration {
        self.operation_timeout
    }

    /// Whether a node was added less than `lifetime` ago.
    pub(crate) fn added_within(&self, lifetime: Duration) -> bool {
        self.added_at.lock().is_some_and(|at| at.elapsed() < lifetime)
    }

    /// When (unix ms) any node last went down, came back, or was found
    /// empty: copies written before may be missing or in the wrong place.
    pub(crate) fn last_change_ms(&self) -> u64 {
        self.snapshot().iter().map(|n| n.changed_at_ms()).max().unwrap_or(0)
    }

    /// No nodes at all (`enabled = false`).
    pub(crate) fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// Slots, retired ones included (indices run `0..len()`).
    pub(crate) fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Every slot, retired ones included, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Arc<Node>> + use<> {
        let snapshot = self.snapshot();
        (0..snapshot.len()).map(move |i| Arc::clone(&snapshot[i]))
    }

    pub(crate) fn get(&self, index: NodeIndex) -> Arc<Node> {
        Arc::clone(&self.snapshot()[index])
    }

    pub(crate) fn is_known(&self, id: &NodeId) -> bool {
        self.index_of(id).is_some()
    }

    fn index_of(&self, id: &NodeId) -> Option<NodeIndex> {
        index_in(&self.snapshot(), id)
    }

    /// The node that stores the session with this id, if any.
    pub(crate) fn node_of(&self, id: &SessionId) -> Option<NodeIndex> {
        self.node_in(&self.snapshot(), id)
    }

    /// The node that stores the session with this id, if any (one snapshot
    /// of the list).
    pub(crate) fn node_for(&self, id: &SessionId) -> Option<Arc<Node>> {
        let snapshot = self.snapshot();
        self.node_in(&snapshot, id).map(|index| Arc::clone(&snapshot[index]))
    }

    /// [`node_of`](Self::node_of) within one snapshot of the list.
    fn node_in(&self, slots: &[Arc<Node>], id: &SessionId) -> Option<NodeIndex> {
        if self.anonymous {
            return Some(0);
        }
        id.node().and_then(|node| index_in(slots, node))
    }

    /// The node id to put into a new session id: a random available regular
    /// node; a random available failover node only when no regular node is
    /// available; `None` when nothing is available (or the node is anonymous).
    pub(crate) fn choose(&self) -> Option<NodeId> {
        if self.anonymous {
            return None;
        }
        let snapshot = self.snapshot();
        let pick = |failover: bool| {
            let candidates: Vec<&Arc<Node>> = snapshot
                .iter()
                .filter(|n| n.is_failover() == failover && n.is_available())
                .collect();
            (!candidates.is_empty()).then(|| candidates[random_below(candidates.len())])
        };
        pick(false).or_else(|| pick(true)).and_then(|n| n.spec.id.clone())
    }

    /// Whether the session should move to another node: its node is down,
    /// or it sits on a failover node while a regular node is available, or
    /// it has no node while one is available.
    pub(crate) fn should_relocate(&self, id: &SessionId) -> bool {
        let snapshot = self.snapshot();
        if self.anonymous || snapshot.is_empty() {
            return false;
        }
        let regular_available = || snapshot.iter().any(|n| !n.is_failover() && n.is_available());
        match self.node_in(&snapshot, id) {
            None => snapshot.iter().any(|n| n.is_available()),
            Some(index) => {
                let node = &snapshot[index];
                !node.is_available() || (node.is_failover() && regular_available())
            }
        }
    }

    /// Availability flips observed on all nodes.
    pub(crate) fn state_changes(&self) -> u64 {
        self.snapshot().iter().map(|n| n.state_changes()).sum()
    }

    /// The other nodes in configured order after `index`, wrapping around:
    /// where non-sticky backups go and where they are looked for.
    /// (Indices from an older list stay valid in every newer one: slots are
    /// only appended.)
    pub(crate) fn ring_after(&self, index: NodeIndex) -> impl Iterator<Item = NodeIndex> + use<> {
        ring(self.len(), index)
    }

    /// The first available node after `index` (the backup node), if any.
    pub(crate) fn next_available(&self, index: NodeIndex) -> Option<NodeIndex> {
        let snapshot = self.snapshot();
        ring(snapshot.len(), index).find(|&i| snapshot[i].is_available())
    }

    /// The first node after `index` that is not retired: where the backup
    /// of a session on `index` is written while that node is up.
    pub(crate) fn designated_backup(&self, index: NodeIndex) -> Option<NodeIndex> {
        let snapshot = self.snapshot();
        ring(snapshot.len(), index).find(|&i| !snapshot[i].is_retired())
    }

    /// `index` if available, else the first available node after it: where
    /// a session's primary copy lives (or moves to) and where its lock is.
    pub(crate) fn home_of(&self, index: NodeIndex) -> Option<NodeIndex> {
        if self.get(index).is_available() {
            Some(index)
        } else {
            self.next_available(index)
        }
    }

    /// Probes every node in force at once, each in its own task (see
    /// [`Node::probe`]); the future owns what it needs (it holds no
    /// reference to the list) and yields what each probe learned.
    pub(crate) fn probe_all(&self, sentinel_key: &str) -> impl Future<Output = Vec<(NodeIndex, ProbeOutcome)>> + use<> {
        let mut probes = tokio::task::JoinSet::new();
        for (index, node) in self.iter().enumerate().filter(|(_, node)| !node.is_retired()) {
            let sentinel_key = sentinel_key.to_owned();
            probes.spawn(async move { (index, node.probe(&sentinel_key).await) });
        }
        async move {
            let mut outcomes = Vec::new();
            while let Some(joined) = probes.join_next().await {
                outcomes.extend(joined.ok());
            }
            outcomes
        }
    }

    /// Ids of the nodes currently considered available.
    pub(crate) fn available_labels(&self) -> Vec<String> {
        self.snapshot()
            .iter()
            .filter(|n| n.is_available())
            .map(|n| n.label())
            .collect()
    }
}

/// The slots after `index` in a list of `len`, wrapping around.
fn ring(len: usize, index: NodeIndex) -> impl Iterator<Item = NodeIndex> {
    (1..len).map(move |step| (index + step) % len)
}

fn index_in(slots: &[Arc<Node>], id: &NodeId) -> Option<NodeIndex> {
    slots.iter().position(|n| n.spec.id.as_ref() == Some(id))
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

    #[tokio::test]
    async fn the_node_list_changes_by_slot_and_indices_stay() {
        let (nodes, _) = nodes("n1:h:1 n2:h:2", "");
        let memory = |_: &NodeSpec| Arc::new(InMemoryNode::new()) as Arc<dyn NodeBackend>;
        let changes = nodes
            .apply(parse_nodes("n2:h:2 n1:h:9 n3:h:3", "n3").unwrap(), memory)
            .unwrap();
        assert_eq!(
            changes,
            NodeChanges {
                added: vec![2],
                moved: vec![0],
                retired: vec![]
            }
        );
        assert_eq!(nodes.get(0).spec.address(), "h:9", "n1 keeps its index");
        assert_eq!(nodes.get(0).epoch(), 1, "a moved node starts empty");
        assert!(nodes.get(2).is_failover());
        assert!(nodes.added_within(Duration::from_secs(1)));

        let changes = nodes.apply(parse_nodes("n1:h:9 n3:h:3", "").unwrap(), memory).unwrap();
        assert_eq!(changes.retired, [1]);
        let retired = nodes.get(1);
        assert!(retired.is_retired() && !retired.is_available());
        assert!(
            !retired.observe(true, Instant::now()),
            "a retired node never comes back by itself"
        );
        assert!(!retired.is_available());
        assert!(!nodes.get(2).is_failover(), "the failover flag follows the new list");
        let on_n2 = SessionId::generate(Some(&NodeId::parse("n2").unwrap()), None);
        assert_eq!(
            nodes.node_of(&on_n2),
            Some(1),
            "ids naming a removed node still resolve"
        );
        assert!(nodes.should_relocate(&on_n2));
        for _ in 0..20 {
            assert_ne!(nodes.choose().unwrap().as_str(), "n2");
        }

        let changes = nodes
            .apply(parse_nodes("n1:h:9 n2:h:2 n3:h:3", "").unwrap(), memory)
            .unwrap();
        assert_eq!(changes.moved, [1], "a removed node added again starts empty");
        assert!(nodes.get(1).is_available() && !nodes.get(1).is_retired());
        assert_eq!(nodes.len(), 3);
    }

    #[tokio::test]
    async fn anonymous_or_empty_node_lists_cannot_change() {
        let memory = |_: &NodeSpec| Arc::new(InMemoryNode::new()) as Arc<dyn NodeBackend>;
        let (anonymous, _) = nodes("localhost:11211", "");
        assert!(anonymous.apply(parse_nodes("n1:h:1", "").unwrap(), memory).is_err());
        let (named, _) = nodes("n1:h:1", "");
        assert!(named.apply(parse_nodes("h:1", "").unwrap(), memory).is_err());
        assert!(named.apply(Vec::new(), memory).is_err());
        assert_eq!(named.get(0).spec.address(), "h:1", "nothing changed");
    }
}
