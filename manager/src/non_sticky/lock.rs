//! The non-sticky session lock.
//!
//! A lock is an atomic `add` of `lock:<prefix><random part of the id>` with
//! TTL `lockExpiration` on the session's home node (its node, or the next
//! available one in the ring while it is down, which is where the session
//! is relocated to). It is retried with backoff — 10 ms doubling to 500 ms —
//! until `operationTimeout` is spent. While held it is renewed every
//! `lockExpiration / 3` with a `touch`, so a long request keeps it; if a
//! renewal finds it gone, the request is marked as having lost its lock and
//! its changes are not saved (it answers 503) instead of silently
//! overwriting a concurrent writer. It is released with a CAS-guarded
//! delete, so a request can only ever release its own lock. A lock left by
//! a crashed instance expires after `lockExpiration`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::Expiry;
use crate::error::Error;
use crate::manager::Shared;
use crate::nodes::NodeIndex;
use crate::stats::Stats;

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// A lock held by this instance.
pub(crate) struct HeldLock {
    node: NodeIndex,
    key: String,
    cas: u64,
    lost: Arc<AtomicBool>,
    renewal: JoinHandle<()>,
    acquired_at: Instant,
}

impl HeldLock {
    /// Whether a renewal found the lock gone (someone else may hold it now).
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

/// Acquires the lock `key` on `node`. `Ok(None)`: not acquired within
/// `operationTimeout`.
pub(crate) async fn acquire(shared: &Arc<Shared>, node: NodeIndex, key: String) -> Result<Option<HeldLock>, Error> {
    let config = &shared.config;
    let counters = &shared.stats.counters;
    let started = Instant::now();
    let deadline = started + config.operation_timeout;
    let mut backoff = FIRST_BACKOFF;
    let expiry = Expiry::After(config.lock_expiration);
    loop {
        let token = shared.instance_token.as_bytes();
        let acquired = shared
            .nodes
            .get(node)
            .call(|b| b.add_with_cas(&key, token, expiry))
            .await;
        match acquired {
            Ok(Some(cas)) => {
                shared.stats.lock_acquire_time.record_duration(started.elapsed());
                Stats::count(&counters.locks_acquired);
                let lost = Arc::new(AtomicBool::new(false));
                let renewal = tokio::spawn(renew(Arc::downgrade(shared), node, key.clone(), lost.clone()));
                return Ok(Some(HeldLock {
                    node,
                    key,
                    cas,
                    lost,
                    renewal,
                    acquired_at: Instant::now(),
                }));
            }
            Ok(None) => {}
            Err(error) => {
                Stats::count(&counters.lock_failures);
                return Err(error);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            shared.stats.lock_failure_time.record_duration(started.elapsed());
            Stats::count(&counters.lock_failures);
            return Ok(None);
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Keeps a held lock alive; flags it lost when it is gone.
async fn renew(shared: std::sync::Weak<Shared>, node: NodeIndex, key: String, lost: Arc<AtomicBool>) {
    loop {
        let Some(expiration) = shared.upgrade().map(|s| s.config.lock_expiration) else {
            return;
        };
        tokio::time::sleep(expiration / 3).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let expiry = Expiry::After(shared.config.lock_expiration);
        match shared.nodes.get(node).call(|b| b.touch(&key, expiry)).await {
            Ok(true) => {}
            Ok(false) => {
                lost.store(true, Ordering::Release);
                Stats::count(&shared.stats.counters.locks_lost);
                tracing::error!(node = %shared.nodes.get(node).label(), "session lock expired during a request; its changes will not be saved");
                return;
            }
            // A failed renewal may still leave the lock alive until its TTL;
            // the next renewal tells.
            Err(error) => tracing::warn!(%error, "renewing a session lock failed"),
        }
    }
}

/// Releases a held lock (only if it is still ours).
pub(crate) async fn release(shared: &Shared, lock: HeldLock) {
    lock.renewal.abort();
    let started = Instant::now();
    let released = shared
        .nodes
        .get(lock.node)
        .call(|b| b.delete_if_cas(&lock.key, lock.cas))
        .await;
    shared.stats.lock_release_time.record_duration(started.elapsed());
    shared.stats.lock_hold_time.record_duration(lock.acquired_at.elapsed());
    match released {
        Ok(_) => Stats::count(&shared.stats.counters.locks_released),
        Err(error) => {
            tracing::warn!(%error, "releasing a session lock failed; it expires by itself")
        }
    }
}
