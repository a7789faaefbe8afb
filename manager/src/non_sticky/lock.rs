//! The non-sticky session lock.
//!
//! A lock is an atomic `add` of `lock:<prefix><random part of the id>` with
//! TTL `lockExpiration` on the session's home node (its node, or the next
//! available one in the ring while it is down, which is where the session
//! is relocated to). It is retried with backoff — 10 ms doubling to 500 ms —
//! until `operationTimeout` is spent. While held it is renewed every
//! `lockExpiration / 3` by rewriting it **only if its CAS token is still
//! ours** (`ms … C<cas>`), so a renewal never extends a lock that expired
//! and was taken by someone else; if a renewal finds it changed or gone,
//! the request is marked as having lost its lock and its changes are not
//! saved (it answers 503) instead of silently overwriting a concurrent
//! writer. It is released with a CAS-guarded delete, so a request can only
//! ever release its own lock.
//!
//! **Locks never leak.** A [`HeldLock`] dropped without [`release`] — its
//! request was cancelled at any await point (a client hang-up, a timeout)
//! — stops renewing and is released in the background; an acquisition
//! whose request is cancelled mid-way finishes in its own task and lets go
//! of what it got. Renewal and release
//! take turns on one mutex, so a release never races a renewal that just
//! changed the token. A lock left by a crashed instance expires after
//! `lockExpiration`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::detached::run_detached;
use crate::error::Error;
use crate::stats::Stats;
use crate::store::Store;
use crate::store::backend::{Expiry, Item, Versioned};
use crate::store::nodes::NodeIndex;

/// What every lock of this instance shares: where locks live and how long.
pub(crate) struct Locks {
    store: Arc<Store>,
    /// `lockExpiration`: a lock's TTL, renewed at a third of it.
    expiration: Duration,
    /// How long an acquisition is retried.
    operation_timeout: Duration,
    /// This instance's name, the first part of each lock's value.
    owner: String,
}

impl Locks {
    pub(crate) fn new(store: Arc<Store>, expiration: Duration, operation_timeout: Duration, owner: String) -> Self {
        Self {
            store,
            expiration,
            operation_timeout,
            owner,
        }
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What the holder, its renewal task and its release share.
struct LockState {
    locks: Weak<Locks>,
    node: NodeIndex,
    key: String,
    /// The lock's value (this instance's token).
    value: Vec<u8>,
    /// The lock's current CAS token; `None` once released (or lost).
    /// Renewal and release hold this mutex while they talk to memcached.
    cas: tokio::sync::Mutex<Option<u64>>,
    lost: AtomicBool,
    /// Until when the lock is surely ours: its TTL counted from when the
    /// last successful (re)write of it was sent.
    valid_until: parking_lot::Mutex<Instant>,
    acquired_at: Instant,
    /// The renewal task, stopped (with its timer) once the lock is let go.
    renewal: parking_lot::Mutex<Option<tokio::task::AbortHandle>>,
}

/// A lock held by this instance. Release it with [`release`]; dropping it
/// releases it in the background.
pub(crate) struct HeldLock {
    state: Arc<LockState>,
    released: bool,
}

impl HeldLock {
    /// Whether a renewal found the lock gone, or renewals failed for so
    /// long that it may have expired (someone else may hold it now).
    pub(crate) fn is_lost(&self) -> bool {
        self.state.lost.load(Ordering::Acquire) || *self.state.valid_until.lock() <= Instant::now()
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Cancelled before release: let go of it now, not after lockExpiration.
        let state = Arc::clone(&self.state);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { let_go(&state).await });
        }
    }
}

/// Acquires the lock `key` on `node`. `Ok(None)`: not acquired within
/// `operationTimeout`. With `read` (a key on the same node and the TTL to
/// slide it to), every attempt pipelines a read of that key after the
/// `add`, and the read of the successful attempt — made under the lock —
/// comes back with it.
///
/// The attempts run in their own task: a request cancelled while an `add`
/// is on the wire does not leave a lock nobody knows about (it would block
/// the session until `lockExpiration`); the task finishes the attempt and,
/// with nobody waiting for it, its lock is dropped and so released.
pub(crate) async fn acquire(
    locks: &Arc<Locks>,
    node: NodeIndex,
    key: String,
    read: Option<(String, Expiry)>,
) -> Result<Option<(HeldLock, Option<Option<Versioned>>)>, Error> {
    // A task cancelled by a runtime shutting down got no lock.
    run_detached(acquire_here(Arc::clone(locks), node, key, read))
        .await
        .unwrap_or(Ok(None))
}

async fn acquire_here(
    locks: Arc<Locks>,
    node: NodeIndex,
    key: String,
    read: Option<(String, Expiry)>,
) -> Result<Option<(HeldLock, Option<Option<Versioned>>)>, Error> {
    let locks = &locks;
    let counters = &locks.store.stats.counters;
    let started = Instant::now();
    let deadline = started + locks.operation_timeout;
    let mut backoff = FIRST_BACKOFF;
    let expiry = Expiry::After(locks.expiration);
    // Unique per acquisition, so a lock whose `add` timed out can later be
    // recognised as ours and removed.
    static ACQUISITIONS: AtomicU64 = AtomicU64::new(0);
    let value = format!("{}:{}", locks.owner, ACQUISITIONS.fetch_add(1, Ordering::Relaxed)).into_bytes();
    let value = value.as_slice();
    loop {
        let sent = Instant::now();
        let lock = Item {
            key: &key,
            value,
            expiry,
        };
        let acquired = match &read {
            None => locks
                .store
                .nodes
                .get(node)
                .call(|b| b.add_with_cas(&key, value, expiry))
                .await
                .map(|cas| (cas, None)),
            Some((read_key, read_expiry)) => locks
                .store
                .nodes
                .get(node)
                .call(|b| b.add_then_get_and_touch(lock, read_key, *read_expiry))
                .await
                .map(|(cas, got)| (cas, Some(got))),
        };
        match acquired {
            Ok((Some(cas), got)) => {
                locks.store.stats.lock_acquire_time.record_duration(started.elapsed());
                Stats::count(&counters.locks_acquired);
                let state = Arc::new(LockState {
                    locks: Arc::downgrade(locks),
                    node,
                    key,
                    value: value.to_vec(),
                    cas: tokio::sync::Mutex::new(Some(cas)),
                    lost: AtomicBool::new(false),
                    valid_until: parking_lot::Mutex::new(sent + locks.expiration),
                    acquired_at: Instant::now(),
                    renewal: parking_lot::Mutex::new(None),
                });
                let renewal = tokio::spawn(renew(Arc::downgrade(&state)));
                *state.renewal.lock() = Some(renewal.abort_handle());
                return Ok(Some((HeldLock { state, released: false }, got)));
            }
            Ok((None, _)) => {}
            Err(error) => {
                Stats::count(&counters.lock_failures);
                if let Error::Backend { source, .. } = &error {
                    // Pipelined with a read, the add may have succeeded
                    // even when the exchange as a whole failed.
                    if source.may_have_been_applied() || read.is_some() {
                        // The add may still land (a frozen node that
                        // thaws): remove it then, rather than leave the
                        // session locked until lockExpiration.
                        tokio::spawn(remove_if_landed(Arc::downgrade(locks), node, key, value.to_vec()));
                    }
                }
                return Err(error);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            locks.store.stats.lock_failure_time.record_duration(started.elapsed());
            Stats::count(&counters.lock_failures);
            return Ok(None);
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Watches for a lock whose `add` timed out to appear with our value, and
/// deletes it (CAS-guarded) when it does; gives up once it would have
/// expired anyway.
async fn remove_if_landed(locks: Weak<Locks>, node: NodeIndex, key: String, value: Vec<u8>) {
    const EVERY: Duration = Duration::from_millis(200);
    let Some(expiration) = locks.upgrade().map(|s| s.expiration) else {
        return;
    };
    let give_up = Instant::now() + expiration;
    while Instant::now() < give_up {
        tokio::time::sleep(EVERY).await;
        let Some(locks) = locks.upgrade() else {
            return;
        };
        match locks.store.nodes.get(node).call(|b| b.get_with_cas(&key)).await {
            Ok(Some(found)) if found.value == value => {
                let _ = locks
                    .store
                    .nodes
                    .get(node)
                    .call(|b| b.delete_if_cas(&key, found.cas))
                    .await;
                tracing::info!("removed a session lock whose acquisition had timed out");
                return;
            }
            // Someone else's: ours never landed (an add cannot replace it).
            Ok(Some(_)) => return,
            // Not there (yet), or the node still does not answer.
            Ok(None) | Err(_) => {}
        }
    }
}

/// Keeps a held lock alive while its holder exists and has not released
/// it; flags it lost when it changed or is gone.
async fn renew(state: Weak<LockState>) {
    loop {
        let Some(every) = state
            .upgrade()
            .and_then(|s| s.locks.upgrade())
            .map(|s| s.expiration / 3)
        else {
            return;
        };
        tokio::time::sleep(every).await;
        // The holder is gone (released, or dropped and being let go).
        let Some(state) = state.upgrade() else {
            return;
        };
        let Some(locks) = state.locks.upgrade() else {
            return;
        };
        let mut cas = state.cas.lock().await;
        let Some(current) = *cas else {
            return;
        };
        let expiry = Expiry::After(locks.expiration);
        let node = locks.store.nodes.get(state.node);
        let sent = Instant::now();
        match node
            .call(|b| b.replace_if_cas(&state.key, &state.value, current, expiry))
            .await
        {
            Ok(Some(renewed)) => {
                *cas = Some(renewed);
                *state.valid_until.lock() = sent + locks.expiration;
            }
            Ok(None) => {
                *cas = None;
                state.lost.store(true, Ordering::Release);
                Stats::count(&locks.store.stats.counters.locks_lost);
                tracing::error!(node = %node.label(), "session lock expired during a request; its changes will not be saved");
                return;
            }
            // A failed renewal may still leave the lock alive until its TTL;
            // the next renewal tells.
            Err(error) => tracing::warn!(%error, "renewing a session lock failed"),
        }
    }
}

/// Releases a held lock (only if it is still ours). The release runs in
/// its own task: a caller cancelled while it waits still lets go.
pub(crate) async fn release(lock: HeldLock) {
    let mut lock = lock;
    lock.released = true;
    let state = Arc::clone(&lock.state);
    let _ = tokio::spawn(async move { let_go(&state).await }).await;
}

/// Deletes the lock if it is still ours, waiting for a renewal in flight.
async fn let_go(state: &LockState) {
    let Some(locks) = state.locks.upgrade() else {
        return;
    };
    let Some(cas) = state.cas.lock().await.take() else {
        return;
    };
    // Holding the token: no renewal is in flight, and none is needed.
    if let Some(renewal) = state.renewal.lock().take() {
        renewal.abort();
    }
    let started = Instant::now();
    let released = locks
        .store
        .nodes
        .get(state.node)
        .call(|b| b.delete_if_cas(&state.key, cas))
        .await;
    locks.store.stats.lock_release_time.record_duration(started.elapsed());
    locks
        .store
        .stats
        .lock_hold_time
        .record_duration(state.acquired_at.elapsed());
    match released {
        Ok(_) => Stats::count(&locks.store.stats.counters.locks_released),
        Err(error) => {
            tracing::warn!(%error, "releasing a session lock failed; it expires by itself")
        }
    }
}
