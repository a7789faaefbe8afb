//! When a change may be answered with async backup: once the change
//! answered before it is in memcached. So a `kill -9` of the instance
//! loses at most each session's last answered change, while backups still
//! run off the request path: a change is written inline only when the one
//! answered before it has not landed yet (a client changing one session
//! faster than a backup round trip), which then costs what a synchronous
//! backup costs.

use std::sync::Arc;

use crate::session::state::SessionState;
use crate::stats::Stats;
use crate::sticky::backup::Backups;

impl Backups {
    /// Async backup: answers a change of `session` (already queued) only
    /// once the change answered before it is in memcached. No wait when
    /// that change is stored already (the common case), when nothing
    /// changed since it was answered (a read), when the session ended, or
    /// when its node is known down (its change is held here and written
    /// once the session relocates); otherwise the session is written now,
    /// waiting up to `sessionBackupTimeout` (then it is answered anyway,
    /// counted in `backup_waits_timed_out`).
    pub(crate) async fn acknowledge_change(self: &Arc<Self>, session: &Arc<SessionState>) {
        if self.may_answer(session) {
            return;
        }
        // The answered change is still on its way (queued, or being
        // written): write the session as it is now — which covers it — at
        // once rather than wait for the queue to get to it.
        self.backup_to_completion(vec![Arc::clone(session)]).await;
        if !self.may_answer(session) {
            Stats::count(&self.stats.counters.backup_waits_timed_out);
            session.inner.lock().acknowledge();
        }
    }

    /// Whether `session` may be answered now; if so, it is acknowledged.
    fn may_answer(&self, session: &SessionState) -> bool {
        let mut inner = session.inner.lock();
        let node_up = self
            .store
            .nodes
            .node_of(inner.id())
            .is_some_and(|i| self.store.nodes.get(i).is_available());
        let may = inner.can_answer_now() || inner.is_ended() || !node_up;
        if may {
            inner.acknowledge();
        }
        may
    }
}
