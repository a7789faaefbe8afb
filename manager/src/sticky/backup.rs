//! Writing sessions to memcached: the per-session sync procedure and the
//! bounded async queue in front of it.
//!
//! The queue carries session handles, not byte snapshots: a session waits
//! in it at most once (later requests find it already queued), and the
//! worker serializes whatever the session holds when its turn comes. So
//! memory is bounded by the queue capacity, whatever memcached's latency,
//! and a burst of requests on one session costs one write. When the queue
//! is full the backup is dropped and counted; the session stays "changed"
//! and is queued again by its next request. Nothing is lost: the primary
//! copy is in this process.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::session::id::SessionId;
use crate::session::state::{BackupNeed, SessionState, StoredMark, ttl_margin};
use crate::stats::Stats;
use crate::sticky::Sticky;
use crate::store::backend::{Expiry, Item};
use crate::store::envelope;

/// The sender side of the async backup queue.
pub(crate) struct BackupQueue {
    sender: parking_lot::Mutex<Option<mpsc::Sender<Arc<SessionState>>>>,
    capacity: usize,
}

impl BackupQueue {
    /// Creates the queue and its dispatcher task, which runs at most
    /// `concurrency` backups at once.
    pub(crate) fn start(sticky: Weak<Sticky>, capacity: usize, concurrency: usize) -> (Self, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(capacity);
        let dispatcher = tokio::spawn(dispatch(sticky, receiver, concurrency));
        let queue = Self {
            sender: parking_lot::Mutex::new(Some(sender)),
            capacity,
        };
        (queue, dispatcher)
    }

    /// Sessions waiting in the queue.
    pub(crate) fn len(&self) -> usize {
        self.sender.lock().as_ref().map_or(0, |s| self.capacity - s.capacity())
    }

    /// Queues a backup unless one is already queued. Returns `false` when the
    /// queue is full or closed (the caller decides what to do).
    pub(crate) fn push(&self, session: &Arc<SessionState>, stats: &Stats) -> bool {
        if session.backup_queued.swap(true, Ordering::AcqRel) {
            return true;
        }
        let sent = match self.sender.lock().as_ref() {
            Some(sender) => match sender.try_send(session.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    Stats::count(&stats.counters.backups_dropped);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            None => false,
        };
        if !sent {
            session.backup_queued.store(false, Ordering::Release);
        }
        sent
    }

    /// Stops accepting work; the dispatcher drains what is queued and exits.
    pub(crate) fn close(&self) {
        self.sender.lock().take();
    }
}

/// Most sessions written in one pipelined exchange per node.
const MAX_BATCH: usize = 64;

async fn dispatch(sticky: Weak<Sticky>, mut receiver: mpsc::Receiver<Arc<SessionState>>, concurrency: usize) {
    let permits = Arc::new(Semaphore::new(concurrency));
    while let Some(first) = receiver.recv().await {
        // Whatever queued up meanwhile goes out together: under load one
        // exchange per node carries many sessions.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(session) => batch.push(session),
                Err(_) => break,
            }
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let Some(sticky) = sticky.upgrade() else {
            break;
        };
        tokio::spawn(async move {
            update_stored_copies(&sticky, batch).await;
            drop(permit);
        });
    }
    // Wait for the backups still in flight.
    let _all = permits.acquire_many(concurrency as u32).await;
}

/// A planned write of one session in a batch.
struct BatchedWrite<'a> {
    session: &'a SessionState,
    key: String,
    id: SessionId,
    bytes: Vec<u8>,
    version: u64,
    epoch: u64,
    expiry: Expiry,
}

/// [`update_stored_copy`] for many sessions: their full writes go to memcached
/// in one pipelined exchange per node; anything else (touches, deletes,
/// sessions whose I/O lock is busy) takes the one-by-one path.
async fn update_stored_copies(sticky: &Sticky, batch: Vec<Arc<SessionState>>) {
    if batch.len() == 1 {
        update_stored_copy(sticky, &batch[0]).await;
        return;
    }
    let mut singles: Vec<&SessionState> = Vec::new();
    let mut writes: Vec<(usize, BatchedWrite<'_>)> = Vec::new();
    let mut guards = Vec::new();
    for session in &batch {
        let Ok(guard) = session.io.try_lock() else {
            singles.push(session);
            continue;
        };
        session.backup_queued.store(false, Ordering::Release);
        match plan(sticky, session) {
            Plan::Write {
                id,
                bytes,
                version,
                epoch,
                expiry,
            } => {
                let Some(node) = sticky.store.nodes.node_of(&id) else {
                    continue;
                };
                let key = sticky.store.keys.session(&id);
                guards.push(guard);
                writes.push((
                    node,
                    BatchedWrite {
                        session,
                        key,
                        id,
                        bytes,
                        version,
                        epoch,
                        expiry,
                    },
                ));
            }
            Plan::Nothing => {}
            _ => {
                drop(guard);
                singles.push(session);
            }
        }
    }
    writes.sort_by_key(|(node, _)| *node);
    let mut rest = writes.as_slice();
    while let Some((node, _)) = rest.first() {
        let end = rest.iter().position(|(n, _)| n != node).unwrap_or(rest.len());
        let (group, tail) = rest.split_at(end);
        rest = tail;
        write_group(sticky, *node, group).await;
    }
    drop(guards);
    for session in singles {
        update_stored_copy(sticky, session).await;
    }
}

/// One exchange writing every session of `group` to `node`.
async fn write_group(sticky: &Sticky, node: usize, group: &[(usize, BatchedWrite<'_>)]) {
    let items: Vec<Item<'_>> = group
        .iter()
        .map(|(_, w)| Item {
            key: &w.key,
            value: &w.bytes,
            expiry: w.expiry,
        })
        .collect();
    let started = Instant::now();
    let items = &items;
    let written = sticky
        .store
        .nodes
        .get(node)
        .call(|b| async move { Ok::<_, crate::error::BackendError>(b.set_many(items).await) })
        .await;
    let outcomes = match written {
        Ok(outcomes) => outcomes,
        Err(error) => items.iter().map(|_| Err(error_source(&error))).collect(),
    };
    sticky.stats.backup_time.record_duration(started.elapsed());
    for ((_, write), outcome) in group.iter().zip(outcomes) {
        match outcome {
            Ok(()) => {
                let obsolete = record_written(
                    sticky,
                    write.session,
                    &write.id,
                    write.version,
                    write.epoch,
                    write.expiry,
                    started,
                );
                if obsolete {
                    delete_keys(sticky, write.session, false).await;
                }
            }
            Err(error) => {
                Stats::count(&sticky.stats.counters.backups_failed);
                if error.is_unavailable() {
                    sticky.store.nodes.get(node).observe(false, started);
                }
                tracing::warn!(%error, node = %sticky.store.nodes.get(node).label(), "session backup failed");
                sticky.unsynced.note(&sticky.stats, write.id.as_str());
            }
        }
    }
}

fn error_source(error: &crate::error::Error) -> crate::error::BackendError {
    match error {
        crate::error::Error::Backend { source, .. } => source.clone(),
        other => crate::error::BackendError::Protocol(other.to_string()),
    }
}

/// Notes a successful write; `true` when old keys are left to delete.
fn record_written(
    sticky: &Sticky,
    session: &SessionState,
    id: &SessionId,
    version: u64,
    epoch: u64,
    expiry: Expiry,
    started: Instant,
) -> bool {
    Stats::count(&sticky.stats.counters.backups_written);
    let mut inner = session.inner.lock();
    inner.stored = Some(StoredMark {
        id: id.clone(),
        version,
        epoch,
        expires_at: expires_at(expiry, started),
    });
    // The id may have moved while this write was in flight.
    inner.mark_obsolete(id.clone());
    !inner.obsolete_ids.is_empty()
}

/// One step of bringing a session's memcached copy up to date.
enum Plan {
    Nothing,
    /// The session's node is unknown or down: wait for relocation.
    Deferred,
    Touch {
        id: SessionId,
        expiry: Expiry,
    },
    Write {
        id: SessionId,
        bytes: Vec<u8>,
        version: u64,
        epoch: u64,
        expiry: Expiry,
    },
    Delete {
        ids: Vec<SessionId>,
        invalidated: bool,
    },
}

fn plan(sticky: &Sticky, session: &SessionState) -> Plan {
    let now = Instant::now();
    let inner = session.inner.lock();
    let node = sticky.store.nodes.node_of(&inner.id).map(|i| sticky.store.nodes.get(i));
    let need = inner.backup_need(node.map(|n| n.epoch()));
    let node_up = node.is_some_and(|n| n.is_available());
    match need {
        BackupNeed::Nothing => Plan::Nothing,
        BackupNeed::Touch | BackupNeed::Write if !node_up => Plan::Deferred,
        BackupNeed::Touch => Plan::Touch {
            id: inner.id.clone(),
            expiry: ttl_expiry(inner.write_ttl(now)),
        },
        BackupNeed::Write => {
            let started = Instant::now();
            let bytes = sticky.store.codec.seal_owned(
                &sticky.store.keys.session(&inner.id),
                envelope::encode(inner.record(), envelope::Format::Sticky),
            );
            sticky.stats.serialization_time.record_duration(started.elapsed());
            sticky.stats.session_size.record(bytes.len() as u64);
            Plan::Write {
                id: inner.id.clone(),
                bytes,
                version: inner.version,
                epoch: node.map_or(0, |n| n.epoch()),
                expiry: ttl_expiry(inner.write_ttl(now)),
            }
        }
        BackupNeed::DeleteObsolete => Plan::Delete {
            ids: inner.obsolete_ids.clone(),
            invalidated: false,
        },
        BackupNeed::Delete => {
            let mut ids = inner.obsolete_ids.clone();
            ids.extend(inner.stored.as_ref().map(|s| s.id.clone()));
            ids.push(inner.id.clone());
            ids.dedup();
            Plan::Delete { ids, invalidated: true }
        }
    }
}

/// The memcached expiry of a TTL (`None`: never expires).
fn ttl_expiry(ttl: Option<Duration>) -> Expiry {
    ttl.map_or(Expiry::Never, Expiry::After)
}

fn expires_at(expiry: Expiry, from: Instant) -> Option<Instant> {
    match expiry {
        Expiry::Never => None,
        // Beyond the clock's range: it never expires as far as we can tell.
        Expiry::After(d) => from.checked_add(d),
    }
}

/// Brings the memcached copy of `session` up to date: writes it, extends
/// its TTL, or deletes it and its old keys, as needed. Runs one session at
/// a time (per-session I/O lock), so a delete is never overtaken by an
/// older write.
pub(crate) async fn update_stored_copy(sticky: &Sticky, session: &SessionState) {
    let _io = session.io.lock().await;
    session.backup_queued.store(false, Ordering::Release);
    let counters = &sticky.stats.counters;
    // Two rounds at most: a touch that finds the key gone turns into a write.
    for _ in 0..2 {
        match plan(sticky, session) {
            Plan::Nothing => return,
            Plan::Deferred => {
                Stats::count(&counters.backups_deferred);
                sticky.unsynced.note(&sticky.stats, session.id().as_str());
                return;
            }
            Plan::Touch { id, expiry } => {
                let Some(node) = sticky.store.nodes.node_of(&id).map(|i| sticky.store.nodes.get(i)) else {
                    return;
                };
                let key = sticky.store.keys.session(&id);
                let started = Instant::now();
                match node.call(|b| b.touch(&key, expiry)).await {
                    Ok(true) => {
                        Stats::count(&counters.backups_touched);
                        if let Some(stored) = session.inner.lock().stored.as_mut().filter(|s| s.id == id) {
                            stored.expires_at = expires_at(expiry, started);
                        }
                        return;
                    }
                    Ok(false) => {
                        // Evicted, or the node restarted before the prober noticed.
                        tracing::info!(node = %node.label(), "session missing from its node; writing it again");
                        Stats::count(&counters.backups_restored);
                        session.inner.lock().stored = None;
                    }
                    Err(error) => {
                        Stats::count(&counters.backups_failed);
                        tracing::warn!(%error, "extending a session's TTL failed");
                        sticky.unsynced.note(&sticky.stats, id.as_str());
                        return;
                    }
                }
            }
            Plan::Write {
                id,
                bytes,
                version,
                epoch,
                expiry,
            } => {
                let Some(node) = sticky.store.nodes.node_of(&id).map(|i| sticky.store.nodes.get(i)) else {
                    return;
                };
                let key = sticky.store.keys.session(&id);
                let started = Instant::now();
                let result = node.call(|b| b.set(&key, &bytes, expiry)).await;
                sticky.stats.backup_time.record_duration(started.elapsed());
                match result {
                    Ok(()) => {
                        if record_written(sticky, session, &id, version, epoch, expiry, started) {
                            delete_keys(sticky, session, false).await;
                        }
                    }
                    Err(error) => {
                        Stats::count(&counters.backups_failed);
                        tracing::warn!(%error, "session backup failed");
                        sticky.unsynced.note(&sticky.stats, id.as_str());
                    }
                }
                return;
            }
            Plan::Delete { ids, invalidated } => {
                if invalidated {
                    let mut inner = session.inner.lock();
                    inner.obsolete_ids = ids;
                    inner.stored = None;
                    drop(inner);
                }
                delete_keys(sticky, session, invalidated).await;
                return;
            }
        }
    }
}

/// How long any memcached copy of a sticky session with this interval can
/// outlive its last write: the interval plus the TTL margin (a day when it
/// never expires — its tombstones and local tombstone last that long).
fn copy_lifetime(max_inactive: Option<Duration>) -> Duration {
    max_inactive.map_or(Duration::from_secs(86_400), |max| max.saturating_add(ttl_margin(max)))
}

/// A sticky session ended here (logout, expiry): every id it had is
/// remembered locally (no request of this instance loads it again) and
/// gets a tombstone in memcached through the repair queue — which retries
/// until written, whatever happens to the backup queue or the request —
/// besides the one the backup path writes at once.
pub(crate) fn end_sticky(sticky: &Sticky, session: &SessionState) {
    let (ids, lifetime) = {
        let inner = session.inner.lock();
        let mut ids: Vec<SessionId> = inner.obsolete_ids.clone();
        ids.extend(inner.stored.as_ref().map(|s| s.id.clone()));
        ids.push(inner.id.clone());
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        ids.dedup();
        (ids, copy_lifetime(inner.max_inactive))
    };
    end_sticky_ids(sticky, &ids, lifetime);
}

/// [`end_sticky`] for ids a live session left (`cycle_id`).
pub(crate) fn end_sticky_ids(sticky: &Sticky, ids: &[SessionId], lifetime: Duration) {
    let until = from_now(lifetime);
    let expiry = Expiry::After(lifetime);
    for id in ids {
        sticky.sessions.end(id.as_str(), until);
        let Some(index) = sticky.store.nodes.node_of(id) else {
            continue;
        };
        let key = sticky.store.keys.session(id);
        let sealed = sticky.store.codec.seal_owned(&key, envelope::encode_gone());
        let tombstone = crate::store::repairs::Action::Set(sealed, expiry);
        sticky.store.remember_repair(index, key, tombstone, until);
    }
}

/// `lifetime` from now (a day when that is beyond the clock's range).
fn from_now(lifetime: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(lifetime).unwrap_or(now + Duration::from_secs(86_400))
}

/// The copy lifetime of sessions under this configuration.
pub(crate) fn configured_copy_lifetime(sticky: &Sticky) -> Duration {
    copy_lifetime(sticky.config.max_inactive)
}

/// Writes a tombstone over the sticky copy `key` of `id` now, or queues it
/// as a repair when its node is down or the write fails.
async fn tombstone(sticky: &Sticky, id: &SessionId, key: String) {
    let Some(index) = sticky.store.nodes.node_of(id) else {
        return;
    };
    let lifetime = configured_copy_lifetime(sticky);
    let gone = envelope::encode_gone();
    let written = sticky
        .store
        .write_or_repair(index, key, &gone, Expiry::After(lifetime), from_now(lifetime));
    if written.await.is_ok() {
        Stats::count(&sticky.stats.counters.deletes);
    }
}

/// Deletes the keys of `obsolete_ids`; ids whose delete failed because the
/// node is down stay for the next attempt (capped), the rest are dropped.
async fn delete_keys(sticky: &Sticky, session: &SessionState, invalidated: bool) {
    let (ids, current_random): (Vec<SessionId>, String) = {
        let inner = session.inner.lock();
        // A live session never deletes its own current key.
        let current = (!invalidated).then(|| inner.id.clone());
        let ids = inner
            .obsolete_ids
            .iter()
            .filter(|id| Some(*id) != current.as_ref())
            .cloned()
            .collect();
        (ids, inner.id.random_part().to_owned())
    };
    let mut failed = Vec::new();
    for id in ids {
        let Some(node) = sticky.store.nodes.node_of(&id).map(|i| sticky.store.nodes.get(i)) else {
            continue;
        };
        let key = sticky.store.keys.session(&id);
        if invalidated || id.random_part() != current_random {
            // Ended (logout, expiry) or left by cycle_id: a tombstone, not
            // a delete, and retried as a repair until it is written — so
            // no instance can ever take the session over again.
            tombstone(sticky, &id, key).await;
            continue;
        }
        if !node.is_available() {
            // Known down (e.g. frozen): do not wait operationTimeout on it
            // for every request; retry once it is back.
            failed.push(id);
            continue;
        }
        match node.call(|b| b.delete(&key)).await {
            Ok(_) => Stats::count(&sticky.stats.counters.deletes),
            Err(error) => {
                tracing::debug!(%error, "deleting an old session key failed");
                if error.is_unavailable() {
                    failed.push(id);
                }
            }
        }
    }
    let mut inner = session.inner.lock();
    inner.obsolete_ids.retain(|id| failed.contains(id));
}
