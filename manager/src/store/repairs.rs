//! Writes that could not be done when they were due, retried in the
//! background until done or pointless.
//!
//! Two kinds matter for what non-sticky mode promises:
//!
//! * **a logged-out session's backup slot** on a node that was down or
//!   failed the write: while a live copy is there, a later failover of the
//!   primary could read it and bring the session back; it gets its
//!   tombstone as soon as its node answers;
//! * **a relocated session's old primary copy** on the node it was
//!   relocated off (down, frozen, or unreachable from here): if that node
//!   comes back with its data, a request still carrying the old id would
//!   read the stale copy; it is overwritten with a forward record to the
//!   new id as soon as the node answers.
//!
//! A logout also queues a second tombstone for each backup slot, not before a
//! few `operationTimeout`s from now: a concurrent request's backup write
//! that was already on its way when the logout deleted the copy would
//! otherwise leave a live backup behind the tombstone.
//!
//! Each repair expires when the data it targets would have expired by
//! itself (the backup's lifetime). The queue is bounded
//! ([`CAPACITY`]); when full, the oldest repair is dropped and counted
//! (`repairs_dropped`). After every prober round, [`Store::spawn_repair_retry`](crate::store::Store::spawn_repair_retry) tries,
//! in a task of its own (never delaying the prober; one run at a time),
//! each due repair whose node is available — at most [`PER_ROUND`] per
//! run, so a node coming back is not flooded; the first failure on a node
//! stops that node's repairs until the next run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::stats::Stats;
use crate::store::backend::Expiry;
use crate::store::nodes::{NodeIndex, Nodes};

/// Most repairs kept at once.
pub(crate) const CAPACITY: usize = 100_000;
/// Most repairs tried per prober round.
pub(crate) const PER_ROUND: usize = 2_000;

/// What to do to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Store these (already sealed) bytes.
    Set(Vec<u8>, Expiry),
}

#[derive(Debug)]
pub(crate) struct Repair {
    pub(crate) node: NodeIndex,
    pub(crate) key: String,
    pub(crate) action: Action,
    /// Not tried before this.
    not_before: Instant,
    until: Instant,
}

/// The repairs not done yet.
#[derive(Default)]
pub(crate) struct Repairs {
    queue: Mutex<VecDeque<Repair>>,
    /// A retry run is under way.
    running: AtomicBool,
}

impl Repairs {
    /// Remembers that `action` must be done to `key` on `node` while
    /// before `until`.
    /// [`remember`](Self::remember), not to be tried before `not_before`.
    pub(crate) fn remember(
        &self,
        stats: &Stats,
        node: NodeIndex,
        key: String,
        action: Action,
        not_before: Instant,
        until: Instant,
    ) {
        let mut queue = self.queue.lock();
        if queue.len() >= CAPACITY {
            queue.pop_front();
            Stats::count(&stats.counters.repairs_dropped);
            tracing::warn!("the repair queue is full; the oldest repair was dropped");
        }
        queue.push_back(Repair {
            node,
            key,
            action,
            not_before,
            until,
        });
        Stats::count(&stats.counters.repairs_queued);
    }

    /// Marks a retry run as started; `false` when one already is.
    pub(crate) fn begin_run(&self) -> bool {
        !self.running.swap(true, Ordering::AcqRel)
    }

    /// Marks the retry run as finished.
    pub(crate) fn end_run(&self) {
        self.running.store(false, Ordering::Release);
    }

    /// How many repairs wait.
    pub(crate) fn len(&self) -> usize {
        self.queue.lock().len()
    }

    /// Up to [`PER_ROUND`] repairs due now on available nodes; drops the
    /// expired ones and those owed to removed nodes.
    pub(crate) fn take_due(&self, nodes: &Nodes) -> Vec<Repair> {
        let now = Instant::now();
        let mut queue = self.queue.lock();
        queue.retain(|repair| repair.until > now && !nodes.get(repair.node).is_retired());
        let mut due = Vec::new();
        let mut waiting = VecDeque::with_capacity(queue.len());
        while let Some(repair) = queue.pop_front() {
            if due.len() < PER_ROUND && repair.not_before <= now && nodes.get(repair.node).is_available() {
                due.push(repair);
            } else {
                waiting.push_back(repair);
            }
        }
        *queue = waiting;
        due
    }

    pub(crate) fn put_back(&self, stats: &Stats, repair: Repair) {
        let mut queue = self.queue.lock();
        if queue.len() < CAPACITY {
            queue.push_back(repair);
        } else {
            Stats::count(&stats.counters.repairs_dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::manager::SessionManager;
    use crate::store::backend::{InMemoryNode, NodeBackend};

    #[tokio::test(start_paused = true)]
    async fn repairs_wait_for_their_node_expire_and_stay_bounded() {
        let nodes: Vec<Arc<InMemoryNode>> = (0..2).map(|_| Arc::new(InMemoryNode::new())).collect();
        let config = Config::builder()
            .set("memcachedNodes", "n1:127.0.0.1:1,n2:127.0.0.1:2")
            .unwrap()
            .set("sticky", "false")
            .unwrap()
            .build()
            .unwrap();
        let backends = nodes.iter().map(|n| Arc::clone(n) as Arc<dyn NodeBackend>).collect();
        let manager = SessionManager::with_backends(config, backends).expect("one backend per node");
        let store = &*manager.inner.store;
        nodes[1].put_raw("stale", b"x");
        nodes[1].set_down(true);
        store.nodes.get(1).observe(false, Instant::now());
        let until = Instant::now() + Duration::from_secs(60);
        store.remember_repair(
            1,
            "stale".to_owned(),
            Action::Set(b"gone".to_vec(), Expiry::Never),
            until,
        );
        store.retry_repairs().await;
        // Not tried while its node is down (a try would have failed and
        // marked nothing; the repair simply waits).
        assert_eq!(store.repairs.len(), 1);
        nodes[1].set_down(false);
        store.nodes.get(1).observe(true, Instant::now());
        store.retry_repairs().await;
        assert_eq!(
            nodes[1].get("stale").await.unwrap().unwrap(),
            b"gone",
            "done once its node is back"
        );
        assert_eq!(store.repairs.len(), 0);

        nodes[1].set_down(true);
        store.nodes.get(1).observe(false, Instant::now());
        store.remember_repair(
            1,
            "late".to_owned(),
            Action::Set(b"gone".to_vec(), Expiry::Never),
            Instant::now() + Duration::from_secs(1),
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        store.retry_repairs().await;
        assert_eq!(store.repairs.len(), 0, "a repair past its data's lifetime is dropped");

        for n in 0..CAPACITY + 5 {
            store.remember_repair(
                1,
                format!("k{n}"),
                Action::Set(b"gone".to_vec(), Expiry::Never),
                until + Duration::from_secs(60),
            );
        }
        assert_eq!(store.repairs.len(), CAPACITY);
        assert_eq!(
            store
                .stats
                .counters
                .repairs_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            5
        );
    }
}
