//! The memcached boundary: a small per-node trait with a real memcached
//! implementation and an in-process one.
//!
//! One [`NodeBackend`] serves one node. A miss is `Ok(None)` / `Ok(false)`,
//! never an error. Implementations need not bound their own latency: the
//! manager wraps every call in `operationTimeout`.

mod in_memory;
mod memcached;
pub(crate) mod metered;
mod node_backend;

pub use self::in_memory::{InMemoryNode, OperationCounts};
pub use self::memcached::MemcachedNode;
#[cfg(feature = "fuzzing")]
pub(crate) use self::memcached::parse_replies_for_fuzzing;
pub use self::node_backend::{Expiry, Item, NodeBackend, Versioned, WriteMode, WriteOutcome};

use std::sync::Arc;
use std::time::Duration;

use crate::error::{ConfigError, Error};
use crate::store::node::NodeSpec;

/// One backend per configured node, in order: a [`MemcachedNode`] for
/// each of `specs` (dialed lazily), or one [`InMemoryNode`] — the embedded
/// store — when no node is configured.
pub(crate) async fn connect(
    specs: Option<&[NodeSpec]>,
    operation_timeout: Duration,
) -> Result<Vec<Arc<dyn NodeBackend>>, Error> {
    let Some(specs) = specs else {
        return Ok(vec![Arc::new(InMemoryNode::new())]);
    };
    let mut backends: Vec<Arc<dyn NodeBackend>> = Vec::with_capacity(specs.len());
    for spec in specs {
        let node = MemcachedNode::connect(&spec.address(), operation_timeout)
            .await
            .map_err(|source| Error::Backend {
                node: spec.label(),
                source,
            })?;
        backends.push(Arc::new(node));
    }
    Ok(backends)
}

/// Refuses `backends` unless there is exactly one per node of `specs`,
/// in order.
pub(crate) fn check_one_per_node(specs: &[NodeSpec], backends: &[Arc<dyn NodeBackend>]) -> Result<(), ConfigError> {
    if specs.len() == backends.len() {
        return Ok(());
    }
    Err(ConfigError::new(
        "memcachedNodes",
        format!(
            "{} backends were given for {} configured nodes (one per node, in order)",
            backends.len(),
            specs.len()
        ),
    ))
}
