//! The cluster as this instance sees it — each configured node and whether
//! it answers ([`NodeStatus`]), and where a session lives
//! ([`SessionLocation`]) — for status pages, health checks and logs.

use serde::Serialize;

use crate::session::id::SessionId;
use crate::store::nodes::Nodes;

/// One configured memcached node, as this instance sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct NodeStatus {
    /// The node's id (`n1`), or its address for a single anonymous node.
    pub id: String,
    /// `host:port` as configured (resolved at every connection attempt).
    pub address: String,
    /// Listed in `failoverNodes`: used only while no regular node answers.
    pub failover: bool,
    /// Answering, as far as the last operation or probe showed.
    pub available: bool,
}

/// Where a session's copies are, from its id and the nodes' state now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SessionLocation {
    /// The node named in the id: in sticky mode the node holding the
    /// session's memcached copy (its backup; the primary is in the
    /// instance's memory), in non-sticky mode the node holding its
    /// primary copy and its lock. `None` for a single anonymous node.
    pub node: Option<String>,
    /// Non-sticky mode: the node that gets the second copy now (the next
    /// available node after the one holding the primary copy, in configured
    /// order); `None` in sticky mode or when no other node answers.
    pub backup_node: Option<String>,
    /// The route in the id: in sticky mode, the instance holding the
    /// session's primary copy.
    pub instance: Option<String>,
}

/// Every node in force (not retired), in configured order.
pub(crate) fn node_statuses(nodes: &Nodes) -> Vec<NodeStatus> {
    nodes
        .iter()
        .filter(|node| !node.is_retired())
        .map(|node| NodeStatus {
            id: node.label(),
            address: node.spec.address(),
            failover: node.is_failover(),
            available: node.is_available(),
        })
        .collect()
}

/// Where the session with this id lives.
pub(crate) fn locate(nodes: &Nodes, id: &SessionId, sticky: bool) -> SessionLocation {
    let backup = if sticky {
        None
    } else {
        // Where the primary copy lives now (the named node, or the next
        // live one while it is down), and the live node after that.
        nodes
            .node_of(id)
            .and_then(|i| nodes.home_of(i))
            .and_then(|home| nodes.next_available(home))
    };
    SessionLocation {
        node: id.node().map(ToString::to_string),
        backup_node: backup.map(|i| nodes.get(i).label()),
        instance: id.route().map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::session::node_id::NodeId;
    use crate::store::backend::{InMemoryNode, NodeBackend};
    use crate::store::node::parse_nodes;

    fn nodes() -> Nodes {
        let specs = parse_nodes("n1:h1:1 n2:h2:2 n3:h3:3", "n3").unwrap();
        let backends = specs
            .iter()
            .map(|_| Arc::new(InMemoryNode::new()) as Arc<dyn NodeBackend>)
            .collect();
        Nodes::new(specs, backends, Duration::from_millis(100))
    }

    #[tokio::test]
    async fn nodes_are_listed_in_order_with_their_state() {
        let nodes = nodes();
        nodes.get(1).observe(false, Instant::now());
        let statuses = node_statuses(&nodes);
        let summary: Vec<(&str, &str, bool, bool)> = statuses
            .iter()
            .map(|s| (s.id.as_str(), s.address.as_str(), s.failover, s.available))
            .collect();
        assert_eq!(
            summary,
            [
                ("n1", "h1:1", false, true),
                ("n2", "h2:2", false, false),
                ("n3", "h3:3", true, true)
            ]
        );
    }

    #[tokio::test]
    async fn a_session_is_located_by_its_id_and_the_live_nodes() {
        let nodes = nodes();
        let id = SessionId::generate(Some(&NodeId::parse("n1").unwrap()), Some("a1"));
        let sticky = locate(&nodes, &id, true);
        assert_eq!(
            (sticky.node.as_deref(), sticky.backup_node, sticky.instance.as_deref()),
            (Some("n1"), None, Some("a1"))
        );
        assert_eq!(locate(&nodes, &id, false).backup_node.as_deref(), Some("n2"));
        nodes.get(1).observe(false, Instant::now());
        assert_eq!(
            locate(&nodes, &id, false).backup_node.as_deref(),
            Some("n3"),
            "the second copy goes past a dead node"
        );
    }
}
