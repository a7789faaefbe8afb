//! When a change may be answered with async backup: once the change
//! answered before it is in memcached. So a `kill -9` of the instance
//! loses at most each session's last answered change, while backups still
//! run off the request path: a session is written inline only when what
//! was answered before has not landed yet (a client changing one session
//! faster than a backup round trip) or the answer hands the client a new
//! id (`cycle_id`, relocation, takeover), which then costs what a
//! synchronous backup costs.

use std::sync::Arc;

use crate::session::state::SessionState;
use crate::stats::Stats;
use crate::sticky::backup::Backups;

impl Backups {
    /// Async backup: answers something new about `session` (a change by
    /// this request — `changed` — or a new id; its backup is queued) only
    /// once what was answered before is in memcached under the id this
    /// answer carries (see `SessionInner::can_answer_now`). No wait when it
    /// is (the common case), for a read of what was answered, when the
    /// session ended, or when its node is known down (its change is held
    /// here and written once the session relocates); otherwise the session
    /// is written now, waiting up to `sessionBackupTimeout` — if that write
    /// does not land in time (timeout, failure) the answer goes anyway,
    /// counted in `backup_waits_timed_out`.
    pub(crate) async fn acknowledge_change(self: &Arc<Self>, session: &Arc<SessionState>, changed: bool) {
        if self.may_answer(session, changed) {
            return;
        }
        // The answered change is still on its way (queued, or being
        // written): write the session as it is now — which covers it — at
        // once rather than wait for the queue to get to it.
        self.backup_to_completion(vec![Arc::clone(session)]).await;
        if !self.may_answer(session, changed) {
            Stats::count(&self.stats.counters.backup_waits_timed_out);
            session.inner.lock().acknowledge();
        }
    }

    /// Whether `session` may be answered now; if so, it is acknowledged.
    fn may_answer(&self, session: &SessionState, changed: bool) -> bool {
        let mut inner = session.inner.lock();
        let node = self.store.nodes.node_for(inner.id());
        let node_up = node.as_ref().is_some_and(|n| n.is_available());
        let epoch = node.as_ref().map(|n| n.epoch());
        let may = inner.can_answer_now(changed, epoch) || inner.is_ended() || !node_up;
        if may {
            inner.acknowledge();
        }
        may
    }
}
