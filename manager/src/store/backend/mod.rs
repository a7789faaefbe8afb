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
