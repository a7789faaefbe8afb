//! Non-sticky session locks: which requests lock (the locking mode, with
//! `auto` learning), and the lock itself.
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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::Expiry;
use crate::error::Error;
use crate::locking_mode::LockingMode;
use crate::manager::Shared;
use crate::nodes::NodeIndex;
use crate::stats::Stats;

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// `auto` remembers at most this many request kinds.
const MAX_LEARNED: usize = 10_000;
/// `auto` forgets a read-only verdict after this long (MSM: 6 h), so a
/// request kind that starts modifying sessions is locked again.
const READ_ONLY_FOR: Duration = Duration::from_secs(6 * 3600);

/// What `auto` knows about a request kind (method + path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    ReadOnlyUntil(Instant),
    Modifying,
}

/// Decides which requests lock.
#[derive(Default)]
pub(crate) struct LockPolicy {
    learned: Mutex<HashMap<String, Verdict>>,
}

fn request_kind(method: &str, path: &str) -> String {
    format!("{method} {path}")
}

impl LockPolicy {
    /// Whether a request (method, path as sent, without query) locks.
    pub(crate) fn should_lock(&self, mode: &LockingMode, method: &str, path: &str) -> bool {
        match mode {
            LockingMode::None => false,
            LockingMode::All => true,
            LockingMode::UriPattern(pattern) => pattern.matches(path),
            LockingMode::Auto => match self.learned.lock().get(&request_kind(method, path)) {
                Some(Verdict::ReadOnlyUntil(until)) => *until <= Instant::now(),
                Some(Verdict::Modifying) | None => true,
            },
        }
    }

    /// `auto`: remembers whether a request kind modified the session. A
    /// kind seen modifying once is locked from then on.
    pub(crate) fn learn(&self, method: &str, path: &str, modified: bool) {
        let mut learned = self.learned.lock();
        if learned.len() >= MAX_LEARNED {
            learned.retain(|_, verdict| *verdict == Verdict::Modifying);
        }
        let kind = request_kind(method, path);
        if modified {
            learned.insert(kind, Verdict::Modifying);
        } else if learned.get(&kind) != Some(&Verdict::Modifying) {
            learned.insert(kind, Verdict::ReadOnlyUntil(Instant::now() + READ_ONLY_FOR));
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn auto_learns_read_only_kinds_and_never_forgets_modifying_ones() {
        let policy = LockPolicy::default();
        let auto = LockingMode::Auto;
        assert!(policy.should_lock(&auto, "GET", "/a"), "first request of a kind locks");
        policy.learn("GET", "/a", false);
        assert!(!policy.should_lock(&auto, "GET", "/a"));
        assert!(policy.should_lock(&auto, "POST", "/a"), "method is part of the kind");
        policy.learn("GET", "/a", true);
        assert!(policy.should_lock(&auto, "GET", "/a"));
        policy.learn("GET", "/a", false);
        assert!(policy.should_lock(&auto, "GET", "/a"), "modifying is for good");
    }

    #[tokio::test(start_paused = true)]
    async fn read_only_verdicts_expire() {
        let policy = LockPolicy::default();
        policy.learn("GET", "/a", false);
        assert!(!policy.should_lock(&LockingMode::Auto, "GET", "/a"));
        tokio::time::advance(READ_ONLY_FOR).await;
        assert!(policy.should_lock(&LockingMode::Auto, "GET", "/a"));
    }

    #[test]
    fn fixed_modes() {
        let policy = LockPolicy::default();
        assert!(!policy.should_lock(&LockingMode::None, "POST", "/x"));
        assert!(policy.should_lock(&LockingMode::All, "GET", "/x"));
        let pattern = LockingMode::parse("uriPattern:/cart/.*").unwrap();
        assert!(policy.should_lock(&pattern, "GET", "/cart/1"));
        assert!(!policy.should_lock(&pattern, "GET", "/cart"));
    }
}
