//! Sticky mode: the primary copy of a session lives in this process
//! ([`local_sessions`]); memcached holds a backup of it on the node named
//! in its id, written after each request that changed it ([`backup`],
//! through the [`backup_queue`], retried from [`unsynced`]). A request for
//! a session held elsewhere or on a dead node finds it through
//! [`resolve`] (take over) and [`relocate`].
//!
//! This file holds [`Sticky`], the mode's state, and the transitions that
//! end a session here; the other files take it (or, lower down, only the
//! [`Backups`] writer) and never the other way round.

mod acknowledge;
pub(crate) mod backup;
pub(crate) mod backup_queue;
pub(crate) mod local_sessions;
pub(crate) mod relocate;
pub(crate) mod resolve;
pub(crate) mod unsynced;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::config::Config;
use crate::events::{Listeners, SessionEventKind};
use crate::id_gates::IdGates;
use crate::session::id::SessionId;
use crate::session::state::SessionState;
use crate::stats::Stats;
use crate::sticky::backup::{Backups, copy_lifetime, from_now, ids_with_copies, update_stored_copy};
use crate::sticky::local_sessions::LocalSessions;
use crate::store::Store;
use crate::store::nodes::NodeIndex;

/// Sticky mode's state: the sessions held here and their backups.
pub(crate) struct Sticky {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<Store>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) sessions: LocalSessions,
    pub(crate) backups: Arc<Backups>,
    /// Serializes, per session id, the takeovers of this process.
    pub(crate) id_gates: IdGates,
    /// The app's lifecycle listeners (expiry, takeover).
    pub(crate) listeners: Arc<Listeners>,
}

impl Sticky {
    /// The sticky state, and the backup dispatcher task it started.
    pub(crate) fn start(
        config: Arc<Config>,
        store: Arc<Store>,
        stats: Arc<Stats>,
        listeners: Arc<Listeners>,
    ) -> (Arc<Self>, JoinHandle<()>) {
        let (backups, dispatcher) = Backups::start(&config, Arc::clone(&store), Arc::clone(&stats));
        let sticky = Self {
            config,
            store,
            stats,
            sessions: LocalSessions::default(),
            backups,
            id_gates: IdGates::default(),
            listeners,
        };
        (Arc::new(sticky), dispatcher)
    }

    /// Queues (async mode) a backup of `session`; see [`Backups::schedule`].
    pub(crate) fn schedule_backup(&self, session: &Arc<SessionState>) -> bool {
        self.backups.schedule(session)
    }

    /// Ends a session (logout): see [`end`](Self::end). `false` when it
    /// had already ended.
    pub(crate) fn invalidate(&self, session: &SessionState) -> bool {
        self.end(session)
    }

    /// Expires an idle session: ends it (see [`end`](Self::end)) and
    /// queues the backup that tombstones its copy now. Nothing when it
    /// already ended.
    pub(crate) fn expire(&self, session: &Arc<SessionState>) {
        if self.end(session) {
            Stats::count(&self.stats.counters.sessions_expired);
            self.schedule_backup(session);
            self.listeners.notify(SessionEventKind::Expired, session);
        }
    }

    /// Ends a session here: every id it had is marked ended (no request of
    /// this instance loads it from memcached again) **before** the session
    /// itself ends, in one step with its removal from the sessions held
    /// here — so a concurrent request either still finds the live session
    /// (and shares its end) or finds the id ended, never a gap in which
    /// it would load the old copy from memcached and write it back. Every
    /// id then gets a tombstone through the repair queue, besides the one
    /// the backup path writes at once. `false` when it had already ended.
    fn end(&self, session: &SessionState) -> bool {
        let ids = ids_with_copies(session);
        let lifetime = self.copy_lifetime_of(session);
        let until = from_now(lifetime);
        for id in &ids {
            self.sessions.end(id.as_str(), until);
        }
        if session.end().is_none() {
            return false;
        }
        for id in &ids {
            self.backups.tombstone_eventually(id, lifetime, Instant::now(), until);
        }
        true
    }

    /// How long a stored copy of `session` could live: by its own interval
    /// or the configuration's, whichever is longer — as long as its
    /// tombstones and "ended" marks must last.
    fn copy_lifetime_of(&self, session: &SessionState) -> Duration {
        let own = session.inner.lock().max_inactive();
        self.backups.copy_lifetime().max(copy_lifetime(own))
    }

    /// Files `session` under its new id `new` (given by `cycle_id`) and ends
    /// its old id `old` here and in memcached. The new filing comes first,
    /// so a request with either id finds the session or finds `old` ended.
    pub(crate) fn retire_id(&self, session: &Arc<SessionState>, old: &SessionId, new: &SessionId) {
        self.sessions.insert(new.as_str(), Arc::clone(session));
        let lifetime = self.copy_lifetime_of(session);
        let until = from_now(lifetime);
        self.sessions.end(old.as_str(), until);
        let not_before = Instant::now() + self.backups.retired_id_grace();
        self.backups.tombstone_eventually(old, lifetime, not_before, until);
    }

    /// One round of the expiry sweep.
    pub(crate) fn sweep_expired(&self) {
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
    pub(crate) fn restore_node(&self, index: NodeIndex) -> u64 {
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
    pub(crate) async fn shut_down(&self, dispatcher: Option<JoinHandle<()>>) {
        self.backups.queue.close();
        if let Some(dispatcher) = dispatcher {
            let _ = dispatcher.await;
        }
        let mut flushes = JoinSet::new();
        for session in self.sessions.all() {
            let backups = Arc::clone(&self.backups);
            flushes.spawn(async move { update_stored_copy(&backups, &session).await });
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
        let all = Arc::clone(&sticky.backups.sync_writes)
            .acquire_many_owned(u32::try_from(backup::MAX_SYNC_WRITES).unwrap())
            .await
            .unwrap();
        let session = manager.inner.create_session();
        session.inner.lock().set_attribute("k", vec![1].into());
        sticky.sessions.insert(session.id().as_str(), session.clone());
        let started = Instant::now();
        sticky.backups.backup_now(vec![session.clone()]).await;
        assert!(started.elapsed() >= Duration::from_millis(50), "it waited for a slot");
        assert_eq!(
            sticky.backups.sync_writes.available_permits(),
            0,
            "no write beyond the bound"
        );
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
