//! Writing sessions to memcached ([`Backups`]): what a session's stored
//! copy needs (write, touch, tombstone, nothing), done now or through the
//! [`BackupQueue`]; failures are remembered in [`Unsynced`] and retried.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::config::Config;
use crate::detached::run_detached;
use crate::session::id::SessionId;
use crate::session::state::{BackupNeed, SessionState, StoredMark, ttl_margin};
use crate::stats::Stats;
use crate::sticky::backup_queue::{BackupQueue, WriteBatch};
use crate::sticky::unsynced::Unsynced;
use crate::store::Store;
use crate::store::backend::{Expiry, Item};
use crate::store::envelope;
use crate::store::nodes::NodeIndex;
use crate::telemetry::BACKUPS;

/// Most synchronous backup writes in flight at once (see
/// [`Backups::backup_now`]).
pub(crate) const MAX_SYNC_WRITES: usize = 4096;

/// The writer of sticky sessions' stored copies.
pub(crate) struct Backups {
    pub(crate) store: Arc<Store>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) queue: BackupQueue,
    /// Sessions whose last backup failed or was deferred.
    pub(crate) unsynced: Unsynced,
    /// Bounds the synchronous backup writes in flight.
    pub(crate) sync_writes: Arc<Semaphore>,
    /// `maxInactiveInterval`: how long stored copies and tombstones live.
    max_inactive: Option<Duration>,
    /// `sessionBackupTimeout`: how long a synchronous backup may delay a response.
    backup_timeout: Duration,
}

/// How one backup of one session ended.
#[derive(Clone, Copy)]
pub(crate) enum Outcome {
    Written,
    Touched,
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::Touched => "touched",
            Self::Failed => "failed",
        }
    }
}

impl Backups {
    /// The writer, and its queue's dispatcher task.
    pub(crate) fn start(config: &Config, store: Arc<Store>, stats: Arc<Stats>) -> (Arc<Self>, JoinHandle<()>) {
        let mut dispatcher = None;
        let backups = Arc::new_cyclic(|weak: &Weak<Self>| {
            let (queue, task) =
                BackupQueue::start(weak.clone(), config.backup_queue_capacity, config.backup_concurrency);
            dispatcher = Some(task);
            Self {
                stats,
                queue,
                unsynced: Unsynced::default(),
                sync_writes: Arc::new(Semaphore::new(MAX_SYNC_WRITES)),
                max_inactive: config.max_inactive,
                backup_timeout: config.backup_timeout,
                store,
            }
        });
        (backups, dispatcher.expect("set by new_cyclic"))
    }

    /// Counts one backup of a session on `node` (statistics and metrics).
    fn count(&self, node: NodeIndex, outcome: Outcome) {
        let counters = &self.stats.counters;
        Stats::count(match outcome {
            Outcome::Written => &counters.backups_written,
            Outcome::Touched => &counters.backups_touched,
            Outcome::Failed => &counters.backups_failed,
        });
        let node = self.store.nodes.get(node);
        node.backup_counters[outcome as usize]
            .get_or_init(|| metrics::counter!(BACKUPS, "node" => node.label(), "result" => outcome.label()))
            .increment(1);
    }

    /// How long a stored copy (or its tombstone) lives under this
    /// configuration.
    pub(crate) fn copy_lifetime(&self) -> Duration {
        copy_lifetime(self.max_inactive)
    }

    /// Queues (async mode) a backup of `session`.
    /// `false` when the queue was full: the session then waits among the
    /// unsynced ones and is queued again after the next prober round.
    pub(crate) fn schedule(self: &Arc<Self>, session: &Arc<SessionState>) -> bool {
        if self.queue.push(session, &self.stats) {
            return true;
        }
        if self.queue.len() == 0 {
            // Closed queue (after shutdown): write inline, off the request.
            let backups = self.clone();
            let session = session.clone();
            tokio::spawn(async move { update_stored_copy(&backups, &session).await });
            return true;
        }
        self.unsynced.note(&self.stats, session.id().as_str());
        false
    }

    /// [`backup_now`](Self::backup_now), run detached: a request dropped
    /// while it waits (client hang-up, outer timeout) does not abort the
    /// backups of what it changed or ended.
    pub(crate) async fn backup_to_completion(self: &Arc<Self>, sessions: Vec<Arc<SessionState>>) {
        let backups = Arc::clone(self);
        run_detached(async move { backups.backup_now(sessions).await }).await;
    }

    /// Backs `sessions` up now and waits up to `sessionBackupTimeout`; the
    /// writes go on in the background after that (bounded by `operationTimeout`).
    pub(crate) async fn backup_now(self: &Arc<Self>, sessions: Vec<Arc<SessionState>>) {
        let started = Instant::now();
        let deadline = started
            .checked_add(self.backup_timeout)
            .unwrap_or(started + Duration::from_secs(86_400));
        let mut writes = JoinSet::new();
        for session in sessions {
            // At most MAX_SYNC_WRITES in flight (they outlive a request
            // that stopped waiting for them); past the wait, the session
            // goes to the bounded async queue instead.
            let permit = tokio::time::timeout_at(deadline, Arc::clone(&self.sync_writes).acquire_owned()).await;
            let Ok(Ok(permit)) = permit else {
                self.schedule(&session);
                continue;
            };
            let backups = self.clone();
            writes.spawn(async move {
                update_stored_copy(&backups, &session).await;
                drop(permit);
            });
        }
        let _ = tokio::time::timeout_at(deadline, async { while writes.join_next().await.is_some() {} }).await;
        writes.detach_all();
        self.stats.effective_backup_time.record_duration(started.elapsed());
    }

    /// Queues a tombstone over the stored copy of `id` through the repair
    /// queue — which retries until written, whatever happens to the backup
    /// queue or the request — besides the one the backup path writes at
    /// once. It is not tried before `not_before` and lives (and is retried)
    /// until `until`.
    pub(crate) fn tombstone_eventually(&self, id: &SessionId, lifetime: Duration, not_before: Instant, until: Instant) {
        let Some(index) = self.store.nodes.node_of(id) else {
            return;
        };
        let key = self.store.keys.session(id);
        let sealed = self.store.codec.seal_owned(&key, envelope::encode_gone());
        let tombstone = crate::store::repairs::Action::Set(sealed, Expiry::After(lifetime));
        self.store
            .remember_repair_from(index, key, tombstone, not_before, until);
    }

    /// How long after `cycle_id` the safety-net tombstone of the old id
    /// waits: time for the request to end and its backup to write the new
    /// id first (after which the backup path tombstones the old one), so a
    /// crash in between leaves the client's old id usable, not gone.
    pub(crate) fn retired_id_grace(&self) -> Duration {
        self.backup_timeout
            .saturating_add(self.store.nodes.operation_timeout().saturating_mul(2))
    }
}

impl WriteBatch for Backups {
    async fn write_batch(self: Arc<Self>, batch: Vec<Arc<SessionState>>) {
        update_stored_copies(&self, batch).await;
    }
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
async fn update_stored_copies(backups: &Backups, batch: Vec<Arc<SessionState>>) {
    if batch.len() == 1 {
        update_stored_copy(backups, &batch[0]).await;
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
        match plan(backups, session) {
            Plan::Write {
                id,
                bytes,
                version,
                epoch,
                expiry,
            } => {
                let Some(node) = backups.store.nodes.node_of(&id) else {
                    continue;
                };
                let key = backups.store.keys.session(&id);
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
        write_group(backups, *node, group).await;
    }
    drop(guards);
    for session in singles {
        update_stored_copy(backups, session).await;
    }
}

/// One exchange writing every session of `group` to `node`.
async fn write_group(backups: &Backups, node: usize, group: &[(usize, BatchedWrite<'_>)]) {
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
    let written = backups
        .store
        .nodes
        .get(node)
        .call(|b| async move { Ok::<_, crate::error::BackendError>(b.set_many(items).await) })
        .await;
    let outcomes = match written {
        Ok(outcomes) => outcomes,
        Err(error) => items.iter().map(|_| Err(error_source(&error))).collect(),
    };
    backups.stats.backup_time.record_duration(started.elapsed());
    for ((_, write), outcome) in group.iter().zip(outcomes) {
        match outcome {
            Ok(()) => {
                let mark = StoredMark {
                    id: write.id.clone(),
                    version: write.version,
                    epoch: write.epoch,
                    expires_at: expires_at(write.expiry, started),
                };
                let obsolete = record_written(backups, node, write.session, mark);
                if obsolete {
                    delete_keys(backups, write.session, false).await;
                }
            }
            Err(error) => {
                backups.count(node, Outcome::Failed);
                if error.is_unavailable() {
                    backups.store.nodes.get(node).observe(false, started);
                }
                tracing::warn!(%error, node = %backups.store.nodes.get(node).label(), "session backup failed");
                backups.unsynced.note(&backups.stats, write.id.as_str());
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
fn record_written(backups: &Backups, node: NodeIndex, session: &SessionState, mark: StoredMark) -> bool {
    backups.count(node, Outcome::Written);
    // The id may have moved while this write was in flight.
    session.inner.lock().record_stored(mark)
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

fn plan(backups: &Backups, session: &SessionState) -> Plan {
    let now = Instant::now();
    let inner = session.inner.lock();
    let node = backups.store.nodes.node_for(inner.id());
    let need = inner.backup_need(node.as_ref().map(|n| n.epoch()));
    let node_up = node.as_ref().is_some_and(|n| n.is_available());
    match need {
        BackupNeed::Nothing => Plan::Nothing,
        BackupNeed::Touch | BackupNeed::Write if !node_up => Plan::Deferred,
        BackupNeed::Touch => Plan::Touch {
            id: inner.id().clone(),
            expiry: ttl_expiry(inner.write_ttl(now)),
        },
        BackupNeed::Write => {
            let started = Instant::now();
            let bytes = backups.store.codec.seal_owned(
                &backups.store.keys.session(inner.id()),
                envelope::encode(inner.record(), envelope::Format::Sticky),
            );
            backups.stats.serialization_time.record_duration(started.elapsed());
            backups.stats.session_size.record(bytes.len() as u64);
            Plan::Write {
                id: inner.id().clone(),
                bytes,
                version: inner.version(),
                epoch: node.map_or(0, |n| n.epoch()),
                expiry: ttl_expiry(inner.write_ttl(now)),
            }
        }
        BackupNeed::DeleteObsolete => Plan::Delete {
            ids: inner.obsolete_ids().to_vec(),
            invalidated: false,
        },
        BackupNeed::Delete => {
            let mut ids = inner.obsolete_ids().to_vec();
            ids.extend(inner.stored().map(|s| s.id.clone()));
            ids.push(inner.id().clone());
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
pub(crate) async fn update_stored_copy(backups: &Backups, session: &SessionState) {
    let _io = session.io.lock().await;
    session.backup_queued.store(false, Ordering::Release);
    let counters = &backups.stats.counters;
    // Two rounds at most: a touch that finds the key gone turns into a write.
    for _ in 0..2 {
        match plan(backups, session) {
            Plan::Nothing => return,
            Plan::Deferred => {
                Stats::count(&counters.backups_deferred);
                backups.unsynced.note(&backups.stats, session.id().as_str());
                return;
            }
            Plan::Touch { id, expiry } => {
                let Some(index) = backups.store.nodes.node_of(&id) else {
                    return;
                };
                let node = backups.store.nodes.get(index);
                let key = backups.store.keys.session(&id);
                let started = Instant::now();
                match node.call(|b| b.touch(&key, expiry)).await {
                    Ok(true) => {
                        backups.count(index, Outcome::Touched);
                        session.inner.lock().record_touched(&id, expires_at(expiry, started));
                        return;
                    }
                    Ok(false) => {
                        // Evicted, or the node restarted before the prober noticed.
                        tracing::info!(node = %node.label(), "session missing from its node; writing it again");
                        Stats::count(&counters.backups_restored);
                        session.inner.lock().forget_stored();
                    }
                    Err(error) => {
                        backups.count(index, Outcome::Failed);
                        tracing::warn!(%error, "extending a session's TTL failed");
                        backups.unsynced.note(&backups.stats, id.as_str());
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
                let Some(index) = backups.store.nodes.node_of(&id) else {
                    return;
                };
                let node = backups.store.nodes.get(index);
                let key = backups.store.keys.session(&id);
                let started = Instant::now();
                let result = node.call(|b| b.set(&key, &bytes, expiry)).await;
                backups.stats.backup_time.record_duration(started.elapsed());
                match result {
                    Ok(()) => {
                        let mark = StoredMark {
                            id: id.clone(),
                            version,
                            epoch,
                            expires_at: expires_at(expiry, started),
                        };
                        if record_written(backups, index, session, mark) {
                            delete_keys(backups, session, false).await;
                        }
                    }
                    Err(error) => {
                        backups.count(index, Outcome::Failed);
                        tracing::warn!(%error, "session backup failed");
                        backups.unsynced.note(&backups.stats, id.as_str());
                    }
                }
                return;
            }
            Plan::Delete { ids, invalidated } => {
                if invalidated {
                    session.inner.lock().plan_deletion(ids);
                }
                delete_keys(backups, session, invalidated).await;
                return;
            }
        }
    }
}

/// How long any memcached copy of a sticky session with this interval can
/// outlive its last write: the interval plus the TTL margin (a day when it
/// never expires — its tombstones and local tombstone last that long).
pub(crate) fn copy_lifetime(max_inactive: Option<Duration>) -> Duration {
    max_inactive.map_or(Duration::from_secs(86_400), |max| max.saturating_add(ttl_margin(max)))
}

/// Every id a session has had that may have a stored copy: its current
/// id, the one its copy is stored under, and those still to delete.
pub(crate) fn ids_with_copies(session: &SessionState) -> Vec<SessionId> {
    let inner = session.inner.lock();
    let mut ids: Vec<SessionId> = inner.obsolete_ids().to_vec();
    ids.extend(inner.stored().map(|s| s.id.clone()));
    ids.push(inner.id().clone());
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    ids.dedup();
    ids
}

/// `lifetime` from now (a day when that is beyond the clock's range).
pub(crate) fn from_now(lifetime: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(lifetime).unwrap_or(now + Duration::from_secs(86_400))
}

/// Writes a tombstone over the sticky copy `key` of `id` now, or queues it
/// as a repair when its node is down or the write fails.
async fn tombstone(backups: &Backups, id: &SessionId, key: String) {
    let Some(index) = backups.store.nodes.node_of(id) else {
        return;
    };
    let lifetime = backups.copy_lifetime();
    let gone = envelope::encode_gone();
    let written = backups
        .store
        .write_or_repair(index, key, &gone, Expiry::After(lifetime), from_now(lifetime));
    if written.await.is_ok() {
        Stats::count(&backups.stats.counters.deletes);
    }
}

/// Deletes the keys of `obsolete_ids`; ids whose delete failed because the
/// node is down stay for the next attempt (capped), the rest are dropped.
async fn delete_keys(backups: &Backups, session: &SessionState, invalidated: bool) {
    let (ids, current_random): (Vec<SessionId>, String) = {
        let inner = session.inner.lock();
        // A live session never deletes its own current key.
        let current = (!invalidated).then(|| inner.id().clone());
        let ids = inner
            .obsolete_ids()
            .iter()
            .filter(|id| Some(*id) != current.as_ref())
            .cloned()
            .collect();
        (ids, inner.id().random_part().to_owned())
    };
    let mut failed = Vec::new();
    for id in ids {
        let Some(node) = backups.store.nodes.node_for(&id) else {
            continue;
        };
        if node.is_retired() {
            // Removed from the node list: nothing there to delete or cover.
            continue;
        }
        let key = backups.store.keys.session(&id);
        if invalidated || id.random_part() != current_random {
            // Ended (logout, expiry) or left by cycle_id: a tombstone, not
            // a delete, and retried as a repair until it is written — so
            // no instance can ever take the session over again.
            tombstone(backups, &id, key).await;
            continue;
        }
        if !node.is_available() {
            // Known down (e.g. frozen): do not wait operationTimeout on it
            // for every request; retry once it is back.
            failed.push(id);
            continue;
        }
        match node.call(|b| b.delete(&key)).await {
            Ok(_) => Stats::count(&backups.stats.counters.deletes),
            Err(error) => {
                tracing::debug!(%error, "deleting an old session key failed");
                if error.is_unavailable() {
                    failed.push(id);
                }
            }
        }
    }
    session.inner.lock().retain_obsolete(|id| failed.contains(id));
}
