//! Statistics: MSM-like counters and timing probes, kept in atomics and
//! read as a plain [`Statistics`] snapshot.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// A histogram registered with the global recorder at its first use.
#[derive(Debug)]
pub(crate) struct LazyHistogram {
    name: &'static str,
    handle: OnceLock<metrics::Histogram>,
}

impl LazyHistogram {
    pub(crate) const fn new(name: &'static str) -> Self {
        Self {
            name,
            handle: OnceLock::new(),
        }
    }

    pub(crate) fn record(&self, value: f64) {
        self.handle.get_or_init(|| metrics::histogram!(self.name)).record(value);
    }
}

/// Histogram names (see the README's metrics table).
pub(crate) const BACKUP_DURATION: &str = "memcached_sessions_backup_duration_seconds";
pub(crate) const BACKUP_WAIT: &str = "memcached_sessions_backup_wait_seconds";
pub(crate) const LOAD_DURATION: &str = "memcached_sessions_load_duration_seconds";
pub(crate) const SERIALIZATION_DURATION: &str = "memcached_sessions_serialization_duration_seconds";
pub(crate) const SESSION_SIZE: &str = "memcached_sessions_size_bytes";
pub(crate) const LOCK_WAIT: &str = "memcached_sessions_lock_wait_seconds";
pub(crate) const LOCK_FAILURE_WAIT: &str = "memcached_sessions_lock_failure_wait_seconds";
pub(crate) const LOCK_RELEASE_DURATION: &str = "memcached_sessions_lock_release_duration_seconds";
pub(crate) const LOCK_HOLD: &str = "memcached_sessions_lock_hold_seconds";

/// Count, total, min and max of a measured duration or size, for
/// [`Statistics`]; every value also goes to a histogram of the
/// [`metrics`] facade (seconds for durations, bytes for sizes).
#[derive(Debug)]
pub(crate) struct MinMaxAvg {
    count: AtomicU64,
    total: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
    histogram: LazyHistogram,
}

impl MinMaxAvg {
    /// A probe whose values also go to the histogram `metric`.
    pub(crate) const fn new(metric: &'static str) -> Self {
        Self {
            count: AtomicU64::new(0),
            total: AtomicU64::new(0),
            min: AtomicU64::new(0),
            max: AtomicU64::new(0),
            histogram: LazyHistogram::new(metric),
        }
    }

    /// Records a size (bytes).
    pub(crate) fn record(&self, value: u64) {
        self.histogram.record(value as f64);
        self.add(value);
    }

    fn add(&self, value: u64) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            self.min.store(value, Ordering::Relaxed);
        } else {
            self.min.fetch_min(value, Ordering::Relaxed);
        }
        self.total.fetch_add(value, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// Records a duration (µs here, seconds in the histogram).
    pub(crate) fn record_duration(&self, duration: Duration) {
        self.histogram.record(duration.as_secs_f64());
        self.add(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    }

    fn snapshot(&self) -> MinMaxAvgSnapshot {
        let count = self.count.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        MinMaxAvgSnapshot {
            count,
            min: if count == 0 {
                0
            } else {
                self.min.load(Ordering::Relaxed)
            },
            avg: total.checked_div(count).unwrap_or(0),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

/// Count, min, average and max of one measured quantity (not a
/// histogram). Durations are in microseconds, sizes in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MinMaxAvgSnapshot {
    /// How many values were recorded.
    pub count: u64,
    /// Smallest value.
    pub min: u64,
    /// Mean value.
    pub avg: u64,
    /// Largest value.
    pub max: u64,
}

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub(crate) $name: AtomicU64, )*
        }

        /// Counters since start. Field names follow MSM's statistics where
        /// one exists.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
        #[non_exhaustive]
        pub struct CounterSnapshot {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        /// Every counter's name and meaning, in [`CounterSnapshot`]'s order.
        pub(crate) const COUNTERS: &[(&str, &str)] = &[ $( (stringify!($name), concat!($($doc, " ",)*)), )* ];

        impl Counters {
            fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        impl CounterSnapshot {
            /// The values, in [`COUNTERS`]' order.
            pub(crate) fn values(&self) -> Vec<u64> {
                vec![ $( self.$name, )* ]
            }
        }
    };
}

counters! {
    /// Requests that ended with a session (existing, new or invalidated).
    requests_with_session,
    /// Requests that ended without any session.
    requests_without_session,
    /// Requests matching `requestUriIgnorePattern`.
    requests_ignored,
    /// Session ids from clients that were malformed or named an unknown node.
    invalid_session_ids,
    /// Session ids from clients that named no session known here or in memcached.
    unknown_session_ids,
    /// Sessions created.
    sessions_created,
    /// Sessions invalidated by the application.
    sessions_invalidated,
    /// Sessions expired from inactivity.
    sessions_expired,
    /// `cycle_id` calls.
    ids_cycled,
    /// Full session writes to memcached.
    backups_written,
    /// Requests after which the session was unchanged and not written.
    backups_skipped,
    /// TTL extensions (`touch`) of unchanged sessions.
    backups_touched,
    /// Writes or touches that failed (timeout, node down, server error).
    backups_failed,
    /// Backups not queued because the async queue was full (retried on the session's next request).
    backups_dropped,
    /// Sticky, async backup: answers sent although the write storing what
    /// was answered before them did not land within `sessionBackupTimeout`
    /// (timed out or failed).
    backup_waits_timed_out,
    /// Backups postponed because the session's node was known to be down.
    backups_deferred,
    /// Sessions re-written because their node lost them (restarted empty).
    backups_restored,
    /// Sessions moved to another memcached node (MSM: memcached failover).
    relocations,
    /// Sessions taken over from another instance (MSM: Tomcat failover).
    takeovers,
    /// Takeovers refused because another instance was taking the same session over.
    takeover_conflicts,
    /// Sessions loaded from memcached.
    loads,
    /// Loads that found nothing.
    load_misses,
    /// Loads that failed (timeout, node down).
    load_failures,
    /// Stored values that could not be decoded (treated as no session).
    decode_failures,
    /// memcached deletes (invalidation, expiry, moved keys).
    deletes,
    /// Node availability changes observed (up→down or down→up).
    node_state_changes,
    /// Non-sticky: requests that used the session without changing it.
    read_only_requests,
    /// Non-sticky: sessions read from their backup node (primary down or empty).
    backup_node_loads,
    /// Non-sticky: primary or backup copies re-created after a node lost them.
    backups_recreated,
    /// Non-sticky: writes that could not be done when due (a logged-out
    /// session's backup delete, a forward record on a relocated session's
    /// old node), queued for retry.
    repairs_queued,
    /// Non-sticky: queued repairs carried out.
    repairs_done,
    /// Non-sticky: queued repairs dropped because the queue was full.
    repairs_dropped,
    /// Non-sticky: requests with the old id of a relocated session that
    /// found it through its forward record.
    forwards_followed,
    /// Non-sticky: session locks acquired.
    locks_acquired,
    /// Non-sticky: session locks not acquired within `operationTimeout` (or failed).
    lock_failures,
    /// Non-sticky: session locks released.
    locks_released,
    /// Non-sticky: session locks that expired during a request.
    locks_lost,
    /// Non-sticky: writes refused because another request changed the
    /// session since it was read (answered 503, nothing saved).
    write_conflicts,
}

/// All figures at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Statistics {
    /// The counters.
    #[serde(flatten)]
    pub counters: CounterSnapshot,
    /// Sessions held in this process.
    pub local_sessions: u64,
    /// Sessions waiting in the async backup queue.
    pub backup_queue_len: u64,
    /// Non-sticky: repairs waiting for their node (see `repairs_queued`).
    pub repair_queue_len: u64,
    /// Sticky: sessions whose last backup failed or was deferred, waiting
    /// for a background retry.
    pub unsynced_sessions: u64,
    /// Nodes currently considered available, by id.
    pub available_nodes: Vec<String>,
    /// Time spent in a backup (serialize + write), µs.
    pub backup_time_us: MinMaxAvgSnapshot,
    /// Time a response waited for backups, µs: its own (sync backup), or,
    /// with async backup and only when its session's previous answered
    /// change had not landed yet, the write that stores it.
    pub effective_backup_time_us: MinMaxAvgSnapshot,
    /// Time to load a session from memcached, µs.
    pub load_time_us: MinMaxAvgSnapshot,
    /// Time to serialize a session, µs.
    pub serialization_time_us: MinMaxAvgSnapshot,
    /// Serialized session size, bytes.
    pub session_size_bytes: MinMaxAvgSnapshot,
    /// Time to acquire a session lock, µs.
    pub lock_acquire_time_us: MinMaxAvgSnapshot,
    /// Time spent before giving up on a lock, µs.
    pub lock_failure_time_us: MinMaxAvgSnapshot,
    /// Time to release a session lock, µs.
    pub lock_release_time_us: MinMaxAvgSnapshot,
    /// Time a session lock was held, µs.
    pub lock_hold_time_us: MinMaxAvgSnapshot,
}

/// The live counters and probes of one manager.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) counters: Counters,
    pub(crate) backup_time: MinMaxAvg,
    pub(crate) effective_backup_time: MinMaxAvg,
    pub(crate) load_time: MinMaxAvg,
    pub(crate) serialization_time: MinMaxAvg,
    pub(crate) session_size: MinMaxAvg,
    pub(crate) lock_acquire_time: MinMaxAvg,
    pub(crate) lock_failure_time: MinMaxAvg,
    pub(crate) lock_release_time: MinMaxAvg,
    pub(crate) lock_hold_time: MinMaxAvg,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            counters: Counters::default(),
            backup_time: MinMaxAvg::new(BACKUP_DURATION),
            effective_backup_time: MinMaxAvg::new(BACKUP_WAIT),
            load_time: MinMaxAvg::new(LOAD_DURATION),
            serialization_time: MinMaxAvg::new(SERIALIZATION_DURATION),
            session_size: MinMaxAvg::new(SESSION_SIZE),
            lock_acquire_time: MinMaxAvg::new(LOCK_WAIT),
            lock_failure_time: MinMaxAvg::new(LOCK_FAILURE_WAIT),
            lock_release_time: MinMaxAvg::new(LOCK_RELEASE_DURATION),
            lock_hold_time: MinMaxAvg::new(LOCK_HOLD),
        }
    }
}

impl Stats {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Statistics {
        Statistics {
            counters: self.counters.snapshot(),
            local_sessions: 0,
            backup_queue_len: 0,
            repair_queue_len: 0,
            unsynced_sessions: 0,
            available_nodes: Vec::new(),
            backup_time_us: self.backup_time.snapshot(),
            effective_backup_time_us: self.effective_backup_time.snapshot(),
            load_time_us: self.load_time.snapshot(),
            serialization_time_us: self.serialization_time.snapshot(),
            session_size_bytes: self.session_size.snapshot(),
            lock_acquire_time_us: self.lock_acquire_time.snapshot(),
            lock_failure_time_us: self.lock_failure_time.snapshot(),
            lock_release_time_us: self.lock_release_time.snapshot(),
            lock_hold_time_us: self.lock_hold_time.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_tracks_min_avg_max() {
        let probe = MinMaxAvg::new("test");
        assert_eq!(probe.snapshot(), MinMaxAvgSnapshot::default());
        for v in [30, 10, 20] {
            probe.record(v);
        }
        assert_eq!(
            probe.snapshot(),
            MinMaxAvgSnapshot {
                count: 3,
                min: 10,
                avg: 20,
                max: 30
            }
        );
    }

    #[test]
    fn snapshot_serializes_flat() {
        let stats = Stats::default();
        Stats::count(&stats.counters.relocations);
        let json = serde_json::to_value(stats.snapshot()).unwrap();
        assert_eq!(json["relocations"], 1);
        assert_eq!(json["backup_time_us"]["count"], 0);
    }
}
