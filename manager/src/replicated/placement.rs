//! Where a document's copies go: rendezvous (highest random weight)
//! hashing of its key over the nodes.
//!
//! Every node gets a score from a hash of its id and the key; the nodes in
//! descending score order are the document's **ranking** — regular nodes
//! first, then `failoverNodes` (used only when fewer than two regular
//! nodes answer). The copies go to the first two *available* nodes of the
//! ranking. The ranking depends only on the key and the node ids, so every
//! instance computes the same one; when a node dies only the documents
//! that ranked it among their first two change placement (to the next
//! node), and when it comes back they return.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::store::nodes::{Node, Nodes};

/// How many copies of a document are kept (primary and backup).
pub(crate) const REPLICAS: usize = 2;

/// The nodes in force (not retired) in the order the document `key` uses
/// them (see the module docs).
pub(crate) fn ranking(nodes: &Nodes, key: &str) -> Vec<Arc<Node>> {
    let mut scored: Vec<(bool, u64, Arc<Node>)> = nodes
        .iter()
        .filter(|node| !node.is_retired())
        .map(|node| (node.is_failover(), score(&node.label(), key), node))
        .collect();
    // Regular before failover nodes, then by descending score; the label
    // breaks (astronomically unlikely) ties, so every instance agrees.
    scored.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then_with(|| a.2.label().cmp(&b.2.label()))
    });
    scored.into_iter().map(|(_, _, node)| node).collect()
}

/// The rendezvous score of `node` for `key`: the first 8 bytes of
/// SHA-256(node, 0, key) — stable across processes, versions and platforms.
fn score(node: &str, key: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(node.as_bytes());
    hasher.update([0u8]);
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("SHA-256 has 32 bytes"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::store::backend::{InMemoryNode, NodeBackend};
    use crate::store::node::parse_nodes;

    fn nodes(list: &str, failover: &str) -> Nodes {
        let specs = parse_nodes(list, failover).unwrap();
        let backends = specs
            .iter()
            .map(|_| Arc::new(InMemoryNode::new()) as Arc<dyn NodeBackend>)
            .collect();
        Nodes::new(specs, backends, Duration::from_millis(100))
    }

    fn labels(ranking: &[Arc<Node>]) -> Vec<String> {
        ranking.iter().map(|n| n.label()).collect()
    }

    #[test]
    fn the_ranking_depends_on_the_key_and_node_ids_only() {
        let a = nodes("n1:h1:1 n2:h2:2 n3:h3:3", "");
        let b = nodes("n3:x:9 n1:y:8 n2:z:7", "");
        for key in ["doc:a", "doc:b", "doc:c"] {
            assert_eq!(labels(&ranking(&a, key)), labels(&ranking(&b, key)), "{key}");
        }
    }

    #[test]
    fn copies_spread_evenly_over_the_nodes() {
        let nodes = nodes("n1:h1:1 n2:h2:2 n3:h3:3 n4:h4:4", "");
        let mut primaries: HashMap<String, usize> = HashMap::new();
        for i in 0..4000 {
            let ranking = ranking(&nodes, &format!("doc:{i}"));
            *primaries.entry(ranking[0].label()).or_default() += 1;
        }
        assert_eq!(primaries.len(), 4);
        for (node, count) in primaries {
            assert!((800..1200).contains(&count), "{node}: {count} of 4000");
        }
    }

    #[tokio::test]
    async fn a_dead_node_moves_only_its_own_documents_and_failover_nodes_rank_last() {
        let nodes = nodes("n1:h1:1 n2:h2:2 n3:h3:3 n4:h4:4", "n4");
        let before: Vec<Vec<String>> = (0..500).map(|i| labels(&ranking(&nodes, &format!("k{i}")))).collect();
        assert!(before.iter().all(|r| r[3] == "n4"), "the failover node ranks last");
        nodes.get(1).observe(false, Instant::now());
        for (i, old) in before.iter().enumerate() {
            // The ranking itself never changes; availability picks from it.
            assert_eq!(&labels(&ranking(&nodes, &format!("k{i}"))), old);
        }
    }
}
