//! Sticky sessions whose last backup failed or was deferred (their node
//! was down or frozen), so memcached may lack their latest change: retried
//! in the background, not only when the session's next request comes.
//!
//! After every prober round, [`retry_unsynced`](crate::sticky::relocate::retry_unsynced) takes up to [`PER_ROUND`] of them,
//! relocates each whose node is still down (as its next request would),
//! and queues its backup; a backup that fails again puts it back. The set
//! holds ids only (the sessions stay in the local store) and is bounded by
//! [`CAPACITY`]; an id beyond it is dropped and counted
//! (`backups_dropped`): that session is then retried by its next request,
//! as before.

use std::collections::HashSet;

use parking_lot::Mutex;

use crate::stats::Stats;

/// Most ids kept.
pub(crate) const CAPACITY: usize = 1_000_000;
/// Most sessions retried per prober round.
pub(crate) const PER_ROUND: usize = 10_000;

/// The ids of the sessions to back up again.
#[derive(Default)]
pub(crate) struct Unsynced {
    ids: Mutex<HashSet<Box<str>>>,
}

impl Unsynced {
    /// Remembers that the session `id`'s backup did not happen.
    pub(crate) fn note(&self, stats: &Stats, id: &str) {
        let mut ids = self.ids.lock();
        if ids.len() >= CAPACITY && !ids.contains(id) {
            Stats::count(&stats.counters.backups_dropped);
            return;
        }
        ids.insert(id.into());
    }

    /// How many sessions wait for a retry.
    pub(crate) fn len(&self) -> usize {
        self.ids.lock().len()
    }

    pub(crate) fn take(&self, most: usize) -> Vec<Box<str>> {
        let mut ids = self.ids.lock();
        let taken: Vec<Box<str>> = ids.iter().take(most).cloned().collect();
        for id in &taken {
            ids.remove(id);
        }
        taken
    }
}
