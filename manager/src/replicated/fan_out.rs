//! Running one operation on a document's replicas: the first
//! [`REPLICAS`] available nodes of its ranking, concurrently, each node
//! that fails replaced by the next available one.

use std::sync::Arc;

use futures_util::future::join_all;

use crate::error::{BackendError, Error};
use crate::replicated::placement::REPLICAS;
use crate::store::nodes::Node;

/// What each node that was tried did, in the order they were tried.
pub(crate) struct Outcomes<T> {
    pub(crate) tried: Vec<(Arc<Node>, Result<T, Error>)>,
}

impl<T> Outcomes<T> {
    /// The nodes that answered, with their answers.
    pub(crate) fn answered(&self) -> impl Iterator<Item = (&Arc<Node>, &T)> {
        self.tried
            .iter()
            .filter_map(|(node, outcome)| outcome.as_ref().ok().map(|answer| (node, answer)))
    }

    /// How many nodes answered.
    pub(crate) fn answered_count(&self) -> usize {
        self.answered().count()
    }

    /// Why nothing answered: the first failure, or "no node available"
    /// when none could be tried.
    pub(crate) fn into_error(self) -> Error {
        self.tried
            .into_iter()
            .find_map(|(_, outcome)| outcome.err())
            .unwrap_or_else(no_node_available)
    }
}

/// Every configured node is down (as far as this instance knows).
pub(crate) fn no_node_available() -> Error {
    Error::Backend {
        node: "(every node)".to_owned(),
        source: BackendError::Unreachable("no memcached node is available".to_owned()),
    }
}

/// Runs `op` on the first `REPLICAS` available nodes of `ranking`
/// concurrently; for every node that fails, on the next available one,
/// until `REPLICAS` answered or the ranking is exhausted. A failure marks
/// the node down (unless it answered with an error), so the next
/// operation skips it at once.
pub(crate) async fn on_replicas<T, F, Fut>(ranking: &[Arc<Node>], op: F) -> Outcomes<T>
where
    F: Fn(Arc<Node>) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut tried: Vec<(Arc<Node>, Result<T, Error>)> = Vec::new();
    let mut rest = ranking.iter();
    let mut answered = 0;
    while answered < REPLICAS {
        let batch: Vec<Arc<Node>> = rest
            .by_ref()
            .filter(|node| node.is_available())
            .take(REPLICAS - answered)
            .cloned()
            .collect();
        if batch.is_empty() {
            break;
        }
        let outcomes = join_all(batch.iter().map(|node| op(Arc::clone(node)))).await;
        for (node, outcome) in batch.into_iter().zip(outcomes) {
            answered += usize::from(outcome.is_ok());
            tried.push((node, outcome));
        }
    }
    Outcomes { tried }
}
