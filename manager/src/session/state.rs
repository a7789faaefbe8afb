//! One session held in this process, and what its memcached copy needs.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::session::attributes::Attributes;
use crate::session::id::SessionId;
use crate::session::record::{RecordRef, SessionRecord};

/// Old ids whose keys still have to be deleted are capped, so a node that
/// stays down cannot make the list grow.
const MAX_OBSOLETE_IDS: usize = 4;

/// A session in local memory. In sticky mode this is the primary copy.
pub(crate) struct SessionState {
    pub(crate) inner: Mutex<SessionInner>,
    /// Serializes this session's memcached writes and deletes, so a delete
    /// can never be overtaken by an older write (held across awaits).
    pub(crate) io: tokio::sync::Mutex<()>,
    /// An async backup for this session is queued; coalesces requests.
    pub(crate) backup_queued: AtomicBool,
}

/// The mutable part of a [`SessionState`].
pub(crate) struct SessionInner {
    id: SessionId,
    /// Attribute map; change it through [`SessionInner::set_attribute`],
    /// [`SessionInner::remove_attribute`] and [`SessionInner::clear_attributes`]
    /// so `attributes_size` stays exact.
    attributes: Attributes,
    /// Serialized size of the attribute entries (without the map length).
    attributes_size: usize,
    /// Increases on every change of `attributes`.
    version: u64,
    created_at_ms: u64,
    last_accessed: Instant,
    last_accessed_ms: u64,
    /// `None`: never expires.
    max_inactive: Option<Duration>,
    /// Ended: logged out or expired.
    invalidated: bool,
    /// The client has been told this id (cookie sent, or it sent it to us).
    announced: bool,
    /// The last successful write to memcached.
    stored: Option<StoredMark>,
    /// The id and version last answered to a client while the backup was
    /// pending (async backup): a later answer that carries something new
    /// waits until a copy at least that recent is stored under the id it
    /// carries.
    acknowledged: Option<(SessionId, u64)>,
    /// Ids this session had before (relocation, takeover, `cycle_id`) whose
    /// keys must be deleted once the new copy is written.
    obsolete_ids: Vec<SessionId>,
}

/// What memcached holds for a session, as far as this process knows.
#[derive(Clone, Debug)]
pub(crate) struct StoredMark {
    pub(crate) id: SessionId,
    pub(crate) version: u64,
    /// The node's epoch at write time; a newer epoch means the node lost it.
    pub(crate) epoch: u64,
    /// When the memcached copy expires; `None` = never.
    pub(crate) expires_at: Option<Instant>,
}

/// What a session's memcached copy needs after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackupNeed {
    /// Up to date.
    Nothing,
    /// Unchanged, but its TTL must be extended.
    Touch,
    /// Changed, new, moved, or lost by its node: write it.
    Write,
    /// Only old keys are left to delete.
    DeleteObsolete,
    /// Invalidated or expired: delete it.
    Delete,
}

/// Upper bound of everything but the attributes in a stored session: magic,
/// envelope variant and three varint `u64`s.
const RECORD_OVERHEAD: usize = 2 + 1 + 3 * 10;

/// Bytes of a varint-encoded length in postcard.
fn varint_len(n: usize) -> usize {
    (usize::BITS - n.leading_zeros()).max(1).div_ceil(7) as usize
}

/// Serialized size of one attribute entry.
fn entry_size(key: &str, value: &[u8]) -> usize {
    varint_len(key.len()) + key.len() + varint_len(value.len()) + value.len()
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How long the memcached copy outlives the session's local expiry: a
/// quarter of the inactivity interval, between 1 s and 5 min. Touches are
/// sent when less than half of this margin is left, so an active session
/// costs at most one touch per `margin / 2`.
pub(crate) fn ttl_margin(max_inactive: Duration) -> Duration {
    (max_inactive / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

impl SessionState {
    pub(crate) fn new(id: SessionId, max_inactive: Option<Duration>) -> Self {
        let now = SystemTime::now();
        Self::from_parts(id, Attributes::default(), unix_ms(now), max_inactive, None)
    }

    /// A session loaded from memcached.
    pub(crate) fn from_record(id: SessionId, record: SessionRecord, stored: Option<StoredMark>) -> Self {
        let max_inactive = (record.max_inactive_secs > 0).then(|| Duration::from_secs(record.max_inactive_secs));
        Self::from_parts(id, record.attributes, record.created_at_ms, max_inactive, stored)
    }

    fn from_parts(
        id: SessionId,
        attributes: Attributes,
        created_at_ms: u64,
        max_inactive: Option<Duration>,
        stored: Option<StoredMark>,
    ) -> Self {
        let attributes_size = attributes.iter().map(|(k, v)| entry_size(k, v)).sum();
        Self {
            inner: Mutex::new(SessionInner {
                id,
                attributes,
                attributes_size,
                version: 0,
                created_at_ms,
                last_accessed: Instant::now(),
                last_accessed_ms: unix_ms(SystemTime::now()),
                max_inactive,
                invalidated: false,
                announced: false,
                stored,
                acknowledged: None,
                obsolete_ids: Vec::new(),
            }),
            io: tokio::sync::Mutex::new(()),
            backup_queued: AtomicBool::new(false),
        }
    }

    pub(crate) fn id(&self) -> SessionId {
        self.inner.lock().id.clone()
    }

    /// Ends the session (logout or expiry) and returns the id it had;
    /// `None` when it had already ended.
    pub(crate) fn end(&self) -> Option<SessionId> {
        let mut inner = self.inner.lock();
        if inner.invalidated {
            return None;
        }
        inner.invalidated = true;
        Some(inner.id.clone())
    }

    /// Records that the client has been told this session's id (it was
    /// created by a request that answered, or arrived with the request).
    pub(crate) fn mark_announced(&self) {
        self.inner.lock().announced = true;
    }
}

impl SessionInner {
    /// The attributes (serialized values by name).
    pub(crate) fn attributes(&self) -> &Attributes {
        &self.attributes
    }

    /// The session's id.
    pub(crate) fn id(&self) -> &SessionId {
        &self.id
    }

    /// Increases on every change of the attributes.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// The session's inactivity interval; `None`: it never expires.
    pub(crate) fn max_inactive(&self) -> Option<Duration> {
        self.max_inactive
    }

    /// Gives the session an inactivity interval of its own ("remember
    /// me"); a change of it is a change of the session (it is written).
    pub(crate) fn set_max_inactive(&mut self, max_inactive: Option<Duration>) {
        if self.max_inactive != max_inactive {
            self.max_inactive = max_inactive;
            self.version += 1;
        }
    }

    /// Whether the session ended (logout or expiry).
    pub(crate) fn is_ended(&self) -> bool {
        self.invalidated
    }

    /// Whether the client has been told this session's id.
    pub(crate) fn is_announced(&self) -> bool {
        self.announced
    }

    /// Records that the client has been told this session's id.
    pub(crate) fn mark_announced(&mut self) {
        self.announced = true;
    }

    /// The last write of this session to memcached this process knows of.
    pub(crate) fn stored(&self) -> Option<&StoredMark> {
        self.stored.as_ref()
    }

    /// Records a write to memcached; the id it was written under stops
    /// being obsolete, the id it replaced (when the session moved while
    /// it was written) becomes obsolete. `true` when old keys are left to
    /// delete.
    pub(crate) fn record_stored(&mut self, mark: StoredMark) -> bool {
        let written = mark.id.clone();
        self.stored = Some(mark);
        self.mark_obsolete(written);
        !self.obsolete_ids.is_empty()
    }

    /// Whether the session as it is now may be answered without a write
    /// first (async backup). Yes when nothing was answered before (losing
    /// this answer loses only it), or when the request changed nothing and
    /// the id is the one answered (a read of what was answered). Otherwise
    /// only when memcached holds a copy under the current id, written in
    /// the node's current `epoch`, at least as recent as the last answer:
    /// a crash then loses at most this answer — never an earlier one, nor
    /// the whole session when the answer hands the client a new id
    /// (`cycle_id`, relocation, takeover).
    pub(crate) fn can_answer_now(&self, changed: bool, epoch: Option<u64>) -> bool {
        let Some((answered_id, answered_version)) = &self.acknowledged else {
            return true;
        };
        if !changed && *answered_id == self.id && self.version <= *answered_version {
            return true;
        }
        self.stored.as_ref().is_some_and(|stored| {
            stored.id == self.id && Some(stored.epoch) == epoch && stored.version >= *answered_version
        })
    }

    /// Records that the session as it is now was answered to a client
    /// while its backup was still pending.
    pub(crate) fn acknowledge(&mut self) {
        match &mut self.acknowledged {
            // The common case (a read): no allocation.
            Some((id, answered)) if *id == self.id => *answered = (*answered).max(self.version),
            acknowledged => {
                let version = acknowledged
                    .as_ref()
                    .map_or(self.version, |(_, answered)| (*answered).max(self.version));
                *acknowledged = Some((self.id.clone(), version));
            }
        }
    }

    /// Taken over from another instance under `previous_id`: what that
    /// instance answered is what was loaded, so the first answer here
    /// (which hands the client a new id) waits until the session is stored
    /// under it.
    pub(crate) fn loaded_as_answered(&mut self, previous_id: SessionId) {
        self.acknowledged = Some((previous_id, self.version));
    }

    /// Slides the known expiry of the stored copy under `id` (a touch).
    pub(crate) fn record_touched(&mut self, id: &SessionId, expires_at: Option<Instant>) {
        if let Some(stored) = self.stored.as_mut().filter(|s| s.id == *id) {
            stored.expires_at = expires_at;
        }
    }

    /// Forgets the stored copy (its node lost it): the next backup writes it in full.
    pub(crate) fn forget_stored(&mut self) {
        self.stored = None;
    }

    /// An ended session's keys, all to delete now: the copy is forgotten.
    pub(crate) fn plan_deletion(&mut self, ids: Vec<SessionId>) {
        self.obsolete_ids = ids;
        self.stored = None;
    }

    /// Ids whose keys are left to delete.
    pub(crate) fn obsolete_ids(&self) -> &[SessionId] {
        &self.obsolete_ids
    }

    /// Keeps only the obsolete ids `keep` says are still to delete.
    pub(crate) fn retain_obsolete(&mut self, keep: impl FnMut(&SessionId) -> bool) {
        self.obsolete_ids.retain(keep);
    }

    /// Moves the session to `id` (its node failed under a write): the old
    /// id's keys are obsolete whether or not a copy was known there.
    pub(crate) fn relocate(&mut self, id: SessionId) {
        let old = std::mem::replace(&mut self.id, id);
        self.mark_obsolete(old);
    }

    /// Whether the session is past its inactivity timeout at `now`.
    pub(crate) fn is_expired(&self, now: Instant) -> bool {
        self.max_inactive
            .is_some_and(|max| now.saturating_duration_since(self.last_accessed) >= max)
    }

    /// Records, for the stored record only, an access at `unix_ms` (the
    /// time of a non-sticky write; the inactivity clock is memcached's TTL).
    pub(crate) fn record_access_at(&mut self, unix_ms: u64) {
        self.last_accessed_ms = unix_ms;
    }

    pub(crate) fn touch_access(&mut self, now: Instant) {
        self.last_accessed = now;
        self.last_accessed_ms = unix_ms(SystemTime::now());
    }

    /// The serialized size (upper bound) the session would have with
    /// `key` set to `bytes`.
    pub(crate) fn size_with(&self, key: &str, bytes: &[u8]) -> usize {
        let (old, count) = match self.attributes.get(key) {
            Some(old) => (entry_size(key, old), self.attributes.len()),
            None => (0, self.attributes.len() + 1),
        };
        RECORD_OVERHEAD + varint_len(count) + self.attributes_size - old + entry_size(key, bytes)
    }

    /// The serialized size (upper bound) of the session.
    #[cfg(test)]
    pub(crate) fn size(&self) -> usize {
        RECORD_OVERHEAD + varint_len(self.attributes.len()) + self.attributes_size
    }

    /// Stores an encoded attribute; only a different value is a change.
    pub(crate) fn set_attribute(&mut self, key: &str, bytes: Box<[u8]>) {
        if self.attributes.get(key) == Some(&*bytes) {
            return;
        }
        self.attributes_size += entry_size(key, &bytes);
        if let Some(old) = self.attributes.insert(key.to_owned(), bytes) {
            self.attributes_size -= entry_size(key, &old);
        }
        self.version += 1;
    }

    /// Removes an attribute; removing an absent one is not a change.
    pub(crate) fn remove_attribute(&mut self, key: &str) -> Option<Box<[u8]>> {
        let removed = self.attributes.remove(key)?;
        self.attributes_size -= entry_size(key, &removed);
        self.version += 1;
        Some(removed)
    }

    /// Removes every attribute.
    pub(crate) fn clear_attributes(&mut self) {
        if !self.attributes.is_empty() {
            self.attributes.clear();
            self.attributes_size = 0;
            self.version += 1;
        }
    }

    /// Changes the id. The old id's key, if it was written, must go.
    pub(crate) fn change_id(&mut self, id: SessionId) {
        // Moving back to an earlier id (a node that returned): keep its key.
        self.obsolete_ids.retain(|obsolete| *obsolete != id);
        let old = std::mem::replace(&mut self.id, id);
        if self.stored.as_ref().is_some_and(|s| s.id == old) {
            self.mark_obsolete(old);
        }
    }

    /// Remembers a key to delete once the current id is written (capped).
    pub(crate) fn mark_obsolete(&mut self, id: SessionId) {
        if id == self.id || self.obsolete_ids.contains(&id) {
            return;
        }
        if self.obsolete_ids.len() == MAX_OBSOLETE_IDS {
            self.obsolete_ids.remove(0);
        }
        self.obsolete_ids.push(id);
    }

    /// The stored form of this session, borrowing the attributes.
    pub(crate) fn record(&self) -> RecordRef<'_> {
        RecordRef {
            created_at_ms: self.created_at_ms,
            last_accessed_ms: self.last_accessed_ms,
            max_inactive_secs: self.max_inactive.map_or(0, |d| d.as_secs()),
            attributes: &self.attributes,
        }
    }

    /// The TTL for a full write at `now`: remaining inactivity plus margin;
    /// `None`: never expires. An interval reaching beyond the clock's range
    /// (a configured or stored `maxInactiveInterval` of ~2^63 s) is "never",
    /// not an overflow.
    pub(crate) fn write_ttl(&self, now: Instant) -> Option<Duration> {
        match self.max_inactive.map(|max| (max, self.last_accessed.checked_add(max))) {
            None | Some((_, None)) => None,
            Some((max, Some(local_deadline))) => Some(
                local_deadline
                    .saturating_duration_since(now)
                    .saturating_add(ttl_margin(max)),
            ),
        }
    }

    /// What the memcached copy needs, given the current epoch of the
    /// session's node (`None`: the session has no node to write to).
    pub(crate) fn backup_need(&self, node_epoch: Option<u64>) -> BackupNeed {
        if self.invalidated {
            let anything_stored = self.stored.is_some() || !self.obsolete_ids.is_empty();
            return if anything_stored {
                BackupNeed::Delete
            } else {
                BackupNeed::Nothing
            };
        }
        let Some(epoch) = node_epoch else {
            return if self.obsolete_ids.is_empty() {
                BackupNeed::Nothing
            } else {
                BackupNeed::DeleteObsolete
            };
        };
        let Some(stored) = &self.stored else {
            return BackupNeed::Write;
        };
        if stored.version != self.version || stored.id != self.id || stored.epoch != epoch {
            return BackupNeed::Write;
        }
        if !self.obsolete_ids.is_empty() {
            return BackupNeed::DeleteObsolete;
        }
        match (stored.expires_at, self.max_inactive) {
            (Some(expires_at), Some(max))
                if self
                    .last_accessed
                    .checked_add(max.saturating_add(ttl_margin(max) / 2))
                    .is_some_and(|due| expires_at < due) =>
            {
                BackupNeed::Touch
            }
            _ => BackupNeed::Nothing,
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
