//! [`NodeId`]: the name of a memcached node, as it appears in session ids.

use std::fmt;

/// Longest node id accepted; ids travel in every session id.
pub(crate) const MAX_NODE_ID_LEN: usize = 32;

/// The id of a memcached node, as written in `memcachedNodes` and in the
/// suffix of every session id (`<random>-<nodeId>`). Word characters only.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Box<str>);

impl NodeId {
    /// Accepts `[A-Za-z0-9_]{1,32}`.
    pub fn parse(text: &str) -> Option<Self> {
        let valid = !text.is_empty()
            && text.len() <= MAX_NODE_ID_LEN
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        valid.then(|| Self(text.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}
