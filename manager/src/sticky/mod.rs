//! Sticky mode: the primary copy of a session lives in this process
//! ([`local_sessions`]); memcached holds a backup of it on the node named
//! in its id, written after each request that changed it ([`backup`],
//! retried through [`unsynced`]). A request for a session held elsewhere
//! or on a dead node finds it through [`resolve`] (take over, relocate).

pub(crate) mod backup;
pub(crate) mod local_sessions;
pub(crate) mod resolve;
pub(crate) mod unsynced;

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::config::Config;
use crate::detached::run_detached;
use crate::id_gates::IdGates;
use crate::session::state::SessionState;
use crate::stats::Stats;
use crate::sticky::backup::BackupQueue;
use crate::sticky::local_sessions::LocalSessions;
use crate::sticky::unsynced::Unsynced;
use crate::store::Store;
use crate::store::nodes::NodeIndex;

/// Most synchronous backup writes in flight at once (see
/// [`Sticky::backup_now`]).
pub(crate) const MAX_SYNC_WRITES: usize = 4096;

/// Sticky mode's state: the sessions held here and their backups.
pub(crate) struct Sticky {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<Store>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) sessions: LocalSessions,
    pub(crate) backups: BackupQueue,
    /// Sessions whose last backup failed or was deferred.
    pub(crate) unsynced: Unsynced,
    /// Bounds the synchronous backup writes in flight.
    pub(crate) sync_writes: Arc<Semaphore>,
    /// Serializes, per session id, the takeovers of this process.
    pub(crate) id_gates: IdGates,
}

impl Sticky {
    /// The sticky state, and the backup dispatcher task it started.
    pub(crate) fn start(config: Arc<Config>, store: Arc<Store>, stats: Arc<Stats>) -> (Arc<Self>, JoinHandle<()>) {
        let mut dispatcher = None;
        let sticky = Arc::new_cyclic(|weak: &Weak<Self>| {
            let (backups, task) =
                BackupQueue::start(weak.clone(), config.backup_queue_capacity, config.backup_concurrency);
            dispatcher = Some(task);
            Self {
                config,
                store,
                stats,
                sessions: LocalSessions::default(),
                backups,
                unsynced: Unsynced::default(),
                sync_writes: Arc::new(Semaphore::new(MAX_SYNC_WRITES)),
                id_gates: IdGates::default(),
            }
        });
        (sticky, dispatcher.expect("set by new_cyclic"))
    }

    /// Queues (async mode) a backup of `session`.
    /// `false` when the queue was full: the session then waits among the
    /// unsynced ones and is queued again after the next prober round.
    pub(crate) fn schedule_backup(self: &Arc<Self>, session: &Arc<SessionState>) -> bool {
        if self.backups.push(session, &self.stats) {
            return true;
        }
        if self.backups.len() == 0 {
            // Closed queue (after shutdown): write inline, off the request.
            let sticky = self.clone();
            let session = session.clone();
            tokio::spawn(async move { backup::update_stored_copy(&sticky, &session).await });
            return true;
        }
        self.unsynced.note(&self.stats, session.id().as_str());
        false
    }

    /// [`backup_now`](Self::backup_now), run detached: a request dropped
    /// while it waits (client hang-up, outer timeout) does not abort the
    /// backups of what it changed or ended.
    pub(crate) async fn backup_to_completion(self: &Arc<Self>, sessions: Vec<Arc<SessionState>>) {
        let sticky = Arc::clone(self);
        run_detached(async move { sticky.backup_now(sessions).await }).await;
    }

    /// Backs `sessions` up now and waits up to `sessionBackupTimeout`; the
    /// writes go on in the background after that (bounded by `operationTimeout`).
    pub(crate) async fn backup_now(self: &Arc<Self>, sessions: Vec<Arc<SessionState>>) {
        let started = Instant::now();
        let deadline = started
            .checked_add(self.config.backup_timeout)
            .unwrap_or(started + Duration::from_secs(86_400));
        let mut writes = JoinSet::new();
        for session in sessions {
            // At most MAX_SYNC_WRITES in flight (they outlive a request
            // that stopped waiting for them); past the wait, the session
            // goes to the bounded async queue instead.
            let permit = tokio::time::timeout_at(deadline, Arc::clone(&self.sync_writes).acquire_owned()).await;
            let Ok(Ok(permit)) = permit else {
                self.schedule_backup(&session);
                continue;
            };
            let sticky = self.clone();
            writes.spawn(async move {
                backup::update_stored_copy(&sticky, &session).await;
                drop(permit);
            });
        }
        let _ = tokio::time::timeout_at(deadline, async { while writes.join_next().await.is_some() {} }).await;
        writes.detach_all();
        self.stats.effective_backup_time.record_duration(started.elapsed());
    }

    /// Ends a session the handler invalidated (logout): it leaves this
    /// process now; its stored copies are tombstoned (see
    /// [`backup::end_sticky`]).
    pub(crate) fn invalidate(&self, session: &SessionState) {
        self.sessions.remove(session.id().as_str());
        backup::end_sticky(self, session);
    }

    /// Expires an idle session: removes it here and tombstones its
    /// memcached copy. Nothing when it already ended.
    pub(crate) fn expire(self: &Arc<Self>, session: &Arc<SessionState>) {
        let Some(id) = session.end() else {
            return;
        };
        self.sessions.remove(id.as_str());
        backup::end_sticky(self, session);
        Stats::count(&self.stats.counters.sessions_expired);
        self.schedule_backup(session);
    }

    /// One round of the expiry sweep.
    pub(crate) fn sweep_expired(self: &Arc<Self>) {
        let now = Instant::now();
        for session in self.sessions.all() {
            let expired = session.inner.lock().is_expired(now);
            if expired {
                self.expire(&session);
            }
        }
        self.sessions.prune_forwards(now);
        self.sessions.prune_ended();
    }

    /// Writes again every session held here for node `index`, which lost
    /// its data; returns how many were queued.
    pub(crate) fn restore_node(self: &Arc<Self>, index: NodeIndex) -> u64 {
        let mut restored = 0u64;
        for session in self.sessions.all() {
            let on_node = self.store.nodes.node_of(&session.id()) == Some(index);
            // Queued now, or (queue full) paced through the unsynced
            // set: every session is restored, however many.
            if on_node && self.schedule_backup(&session) {
                restored += 1;
            }
        }
        restored
    }

    /// Orderly shutdown: closes the backup queue, waits for `dispatcher`
    /// to write what was queued, then writes every session still pending.
    pub(crate) async fn shut_down(self: &Arc<Self>, dispatcher: Option<JoinHandle<()>>) {
        self.backups.close();
        if let Some(dispatcher) = dispatcher {
            let _ = dispatcher.await;
        }
        let mut flushes = JoinSet::new();
        for session in self.sessions.all() {
            let sticky = self.clone();
            flushes.spawn(async move { backup::update_stored_copy(&sticky, &session).await });
        }
        while flushes.join_next().await.is_some() {}
        tracing::info!(
            sessions = self.sessions.len(),
            "session manager shut down; sessions kept in memcached"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::SessionManager;
    use crate::store::backend::{InMemoryNode, NodeBackend};

    /// With every synchronous write slot taken (writes stuck on a frozen
    /// node, say), a request's sync backup does not spawn another task: it
    /// waits up to `sessionBackupTimeout` for a slot, then hands the session
    /// to the bounded async queue.
    #[tokio::test]
    async fn sync_backup_writes_in_flight_are_bounded() {
        let node = Arc::new(InMemoryNode::new());
        let config = Config::builder()
            .set("sticky", "true")
            .unwrap()
            .session_backup_async(false)
            .session_backup_timeout(Duration::from_millis(50))
            .build()
            .unwrap();
        let manager = SessionManager::with_backends(config, vec![node.clone() as Arc<dyn NodeBackend>])
            .expect("one node, one backend");
        let sticky = manager.inner.sticky().expect("sticky mode");
        let all = Arc::clone(&sticky.sync_writes)
            .acquire_many_owned(u32::try_from(MAX_SYNC_WRITES).unwrap())
            .await
            .unwrap();
        let session = manager.inner.create_session();
        session.inner.lock().set_attribute("k", vec![1].into());
        sticky.sessions.insert(session.id().as_str(), session.clone());
        let started = Instant::now();
        sticky.backup_now(vec![session.clone()]).await;
        assert!(started.elapsed() >= Duration::from_millis(50), "it waited for a slot");
        assert_eq!(sticky.sync_writes.available_permits(), 0, "no write beyond the bound");
        drop(all);
        let id = session.id();
        for _ in 0..100 {
            if node.contains(&sticky.store.keys.session(&id)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the async queue wrote it");
    }
}
