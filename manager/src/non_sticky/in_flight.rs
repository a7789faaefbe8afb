//! The sessions this instance's non-sticky requests are using right now,
//! and what their load found out ([`LoadInfo`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::non_sticky::lock::HeldLock;
use crate::session::state::{SessionState, unix_ms};

/// What a load found out about a session's copies.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LoadInfo {
    /// Created by this request: nothing stored yet.
    pub(crate) new: bool,
    /// The primary copy must be (re-)written: lost by its node, or relocated.
    pub(crate) primary_missing: bool,
    /// The session was last written before a node went down, came back or
    /// restarted empty: its backup may be missing or on the wrong node.
    pub(crate) backup_stale: bool,
    /// When the session was last written (from the stored record).
    pub(crate) written_ms: u64,
    /// The session's version in the last write by this instance (0: as
    /// loaded): a change is what came after it.
    pub(crate) version_written: u64,
    /// CAS token of the primary copy as read (or last written) here, with
    /// the key it belongs to: the next write of that key is conditional on
    /// it. Any other key (new session, re-created from the backup,
    /// relocated, new id) is written with an add.
    pub(crate) cas: Option<(u64, u64)>,
}

impl LoadInfo {
    /// What is left to do once the session was written.
    pub(crate) fn after_write(self, version: u64, cas: Option<(u64, u64)>) -> LoadInfo {
        LoadInfo {
            written_ms: unix_ms(SystemTime::now()),
            version_written: version,
            cas: cas.or(self.cas),
            ..LoadInfo::default()
        }
    }
}

/// A session in use by requests of this instance.
pub(crate) struct InFlight {
    pub(crate) session: Arc<SessionState>,
    pub(crate) users: usize,
    pub(crate) lock: Option<HeldLock>,
    pub(crate) load: LoadInfo,
    /// Writes of the non_sticky copy made (or perhaps made: unconfirmed) by
    /// users that finished before the last one.
    pub(crate) writes: u64,
    /// A write of the non_sticky copy was refused (another request changed the
    /// session): the copy holds changes that must never be stored.
    pub(crate) poisoned: bool,
}

/// The sessions non-sticky requests of this instance are using right now.
#[derive(Default)]
pub(crate) struct InFlightSessions {
    pub(crate) by_id: Mutex<HashMap<Box<str>, InFlight>>,
}

impl InFlightSessions {
    pub(crate) fn len(&self) -> usize {
        self.by_id.lock().len()
    }
}

/// A short fingerprint of a storage key, to tell which key a CAS token
/// belongs to.
pub(crate) fn key_tag(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}
