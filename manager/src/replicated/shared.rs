//! What a [`ReplicatedStore`](crate::replicated::ReplicatedStore)'s
//! handles, its operations and its node prober share.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::replicated::versions::VersionClock;
use crate::stats::Stats;
use crate::store::Store;
use crate::store::backend::WriteMode;
use crate::telemetry;

/// What the store's handles and its prober share.
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) counters: Counters,
    pub(crate) clock: VersionClock,
    pub(crate) max_body_size: usize,
    pub(crate) sentinel_key: String,
    pub(crate) prober: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(prober) = self.prober.get_mut().take() {
            prober.abort();
        }
    }
}

/// The counters behind [`ReplicatedStatistics`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) copies_recreated: AtomicU64,
    pub(crate) stale_copies_replaced: AtomicU64,
    pub(crate) single_copy_writes: AtomicU64,
    pub(crate) ids_taken: AtomicU64,
}

impl Counters {
    /// A repair stored: `Add` re-created a missing copy, a replace
    /// replaced an older or undecodable one.
    pub(crate) fn count_repair(&self, mode: WriteMode) {
        let (counter, event) = match mode {
            WriteMode::Add => (&self.copies_recreated, "copy_recreated"),
            WriteMode::Set | WriteMode::IfCas(_) => (&self.stale_copies_replaced, "stale_copy_replaced"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        telemetry::replicated_event(event);
    }

    pub(crate) fn count_single_copy_write(&self) {
        self.single_copy_writes.fetch_add(1, Ordering::Relaxed);
        telemetry::replicated_event("single_copy_write");
    }

    pub(crate) fn count_id_taken(&self) {
        self.ids_taken.fetch_add(1, Ordering::Relaxed);
        telemetry::replicated_event("id_taken");
    }

    /// Stored bytes that did not decode (kept in the shared `Stats`).
    pub(crate) fn count_decode_failure(stats: &Stats) {
        Stats::count(&stats.counters.decode_failures);
        telemetry::replicated_event("decode_failure");
    }
}
