//! Moving sticky sessions off nodes that are down (or off a failover node
//! once a regular one is back), and retrying the backups that failed.

use crate::session::state::SessionState;
use crate::stats::Stats;
use crate::sticky::Sticky;
use crate::sticky::unsynced::PER_ROUND;

/// Moves the session to a live node when its node is down, when it sits on
/// a failover node while a regular one is back, or when it has no node and
/// one is available. With nothing available the id stays as it is (no
/// cookie churn); the session lives on in memory.
pub(crate) fn relocate_if_needed(sticky: &Sticky, session: &SessionState) {
    let mut inner = session.inner.lock();
    if !sticky.store.nodes.should_relocate(inner.id()) {
        return;
    }
    let Some(target) = sticky.store.nodes.choose() else {
        return;
    };
    let old = inner.id().clone();
    if old.node() == Some(&target) {
        return;
    }
    let new = old.with_location(Some(&target), sticky.config.route());
    inner.change_id(new.clone());
    drop(inner);
    sticky.sessions.rekey(old.as_str(), new.as_str(), true);
    Stats::count(&sticky.stats.counters.relocations);
    tracing::info!(
        from = old.node().map_or("none", |n| n.as_str()),
        to = %target,
        "relocating session to another memcached node"
    );
}

/// Queues the backups of up to [`PER_ROUND`] unsynced sessions whose node
/// (or relocation target) is available; the others wait for a later round.
pub(crate) fn retry_unsynced(sticky: &Sticky) {
    let unsynced = &sticky.backups.unsynced;
    for id in unsynced.take(PER_ROUND) {
        let Some(session) = sticky.sessions.get(&id) else {
            // Ended, or no longer held here: nothing to back up.
            continue;
        };
        relocate_if_needed(sticky, &session);
        let current = session.id();
        let available = sticky
            .store
            .nodes
            .node_for(&current)
            .is_some_and(|node| node.is_available());
        if available {
            sticky.schedule_backup(&session);
        } else {
            unsynced.note(&sticky.stats, current.as_str());
        }
    }
}
