//! Every memcached key this crate writes, named in one place.
//!
//! With id `I` and `storageKeyPrefix` `P` (`H(x)`: the keyed hash of `x`
//! with `storageKeySecret`, `x` itself without):
//!
//! | key | holds | mode |
//! |---|---|---|
//! | `P H(I)` | the session | both |
//! | `bak:P H(I)` | the backup copy | non-sticky |
//! | `lock:P H(random part of I)` | the session's lock (does not move with relocation) | non-sticky |
//! | `takeover:P H(I)` | the claim of the instance taking a session over | sticky |
//! | `Pmsm-probe:<instance>` | this instance's sentinel (detects a node restarted empty) | both |
//! | `doc:P H(D)` | a copy of the replicated-store document `D` ([`crate::replicated`]) | — |
//!
//! `H(I)` keeps the node and route suffix of `I` in clear text (only the
//! random part is hashed), so keys still say where a session lives.

use std::borrow::Cow;
use std::sync::Arc;

use crate::session::id::{RANDOM_LEN, SessionId};
use crate::store::seal::StorageKeyHasher;

/// The key format: prefix and, with `storageKeySecret`, the id hasher.
pub(crate) struct Keys {
    prefix: String,
    hasher: Option<Arc<StorageKeyHasher>>,
}

impl Keys {
    pub(crate) fn new(prefix: String, hasher: Option<Arc<StorageKeyHasher>>) -> Self {
        Self { prefix, hasher }
    }

    /// The memcached key of a session.
    pub(crate) fn session(&self, id: &SessionId) -> String {
        self.key("", &self.storage_id(id))
    }

    /// The key of a non-sticky session's backup copy.
    pub(crate) fn backup(&self, id: &SessionId) -> String {
        self.key("bak:", &self.storage_id(id))
    }

    /// The key of a non-sticky session's lock: by the random part only, so
    /// it does not move when the session is relocated.
    pub(crate) fn lock(&self, id: &SessionId) -> String {
        let random = match &self.hasher {
            None => Cow::Borrowed(id.random_part()),
            Some(hasher) => Cow::Owned(hasher.hash(id.random_part())),
        };
        self.key("lock:", &random)
    }

    /// The key an instance claims before taking over a foreign session.
    pub(crate) fn takeover(&self, id: &SessionId) -> String {
        self.key("takeover:", &self.storage_id(id))
    }

    /// The key of a replicated-store document's copies (the same key on
    /// every node holding one). `id` must be a valid document id (see
    /// [`crate::replicated`]).
    pub(crate) fn document(&self, id: &str) -> String {
        let stored = match &self.hasher {
            None => Cow::Borrowed(id),
            Some(hasher) => Cow::Owned(hasher.hash(id)),
        };
        self.key("doc:", &stored)
    }

    /// The sentinel key of the manager instance named `instance`.
    pub(crate) fn sentinel(&self, instance: &str) -> String {
        format!("{}msm-probe:{instance}", self.prefix)
    }

    /// A session id as it appears in memcached keys: the id itself, or,
    /// with `storageKeySecret`, a keyed hash of its random part followed by
    /// its node and route suffix.
    fn storage_id<'i>(&self, id: &'i SessionId) -> Cow<'i, str> {
        match &self.hasher {
            None => Cow::Borrowed(id.as_str()),
            Some(hasher) => {
                let mut hashed = hasher.hash(id.random_part());
                hashed.push_str(&id.as_str()[RANDOM_LEN..]);
                Cow::Owned(hashed)
            }
        }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        let mut key = String::with_capacity(kind.len() + self.prefix.len() + id.len());
        key.push_str(kind);
        key.push_str(&self.prefix);
        key.push_str(id);
        debug_assert!(
            key.len() <= 250 && key.bytes().all(|b| b.is_ascii_graphic()),
            "unsafe memcached key"
        );
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::node_id::NodeId;

    fn id() -> SessionId {
        SessionId::generate(Some(&NodeId::parse("n1").unwrap()), Some("app1"))
    }

    #[test]
    fn plain_keys_carry_the_id() {
        let keys = Keys::new("shop:".to_owned(), None);
        let id = id();
        let text = id.as_str();
        assert_eq!(keys.session(&id), format!("shop:{text}"));
        assert_eq!(keys.backup(&id), format!("bak:shop:{text}"));
        assert_eq!(keys.takeover(&id), format!("takeover:shop:{text}"));
        assert_eq!(keys.lock(&id), format!("lock:shop:{}", id.random_part()));
        assert_eq!(keys.sentinel("abc"), "shop:msm-probe:abc");
        assert_eq!(keys.document("AbC-_9"), "doc:shop:AbC-_9");
    }

    #[test]
    fn hashed_keys_hide_the_random_part_but_keep_node_and_route() {
        let hasher = StorageKeyHasher::parse("AQEBAQEBAQEBAQEBAQEBAQ==").unwrap();
        let keys = Keys::new(String::new(), Some(Arc::new(hasher)));
        let id = id();
        for key in [keys.session(&id), keys.backup(&id), keys.takeover(&id), keys.lock(&id)] {
            assert!(!key.contains(id.random_part()), "{key}");
        }
        assert!(keys.session(&id).ends_with("-n1.app1"));
        assert!(!keys.document(id.as_str()).contains(id.random_part()));
        assert_eq!(keys.session(&id), keys.session(&id), "stable");
        let other = SessionId::generate(Some(&NodeId::parse("n1").unwrap()), Some("app1"));
        assert_ne!(keys.session(&id), keys.session(&other));
    }
}
