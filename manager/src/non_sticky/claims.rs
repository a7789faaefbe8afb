//! Requests sharing one in-flight session: joining it (or loading it
//! first), each request's [`Claim`] on it, and its release — the last user
//! writes what is still due and lets the lock go.

use std::sync::Arc;

use crate::detached::run_detached;
use crate::error::Error;
use crate::non_sticky::NonSticky;
use crate::non_sticky::in_flight::{InFlight, LoadInfo};
use crate::non_sticky::load::{load, lock_for};
use crate::non_sticky::lock::HeldLock;
use crate::non_sticky::write::write_back;
use crate::session::id::SessionId;
use crate::session::state::SessionState;
use crate::stats::Stats;

/// One request's share of an in-flight session. Hand it back with
/// [`release`]; a claim dropped without that (its request was cancelled)
/// is counted out in the background, so its in-flight entry and lock never
/// linger.
pub(crate) struct Claim {
    pub(crate) non_sticky: Arc<NonSticky>,
    /// The id the session was loaded under (its key in the in-flight map).
    pub(crate) key: Box<str>,
    pub(crate) session: Arc<SessionState>,
    /// The entry's write count when this request joined: a later write by
    /// a co-user may have carried this request's change.
    writes_at_join: u64,
    /// Counted out of the in-flight entry already.
    pub(crate) released: bool,
}

impl Claim {
    pub(crate) fn new(
        non_sticky: &Arc<NonSticky>,
        key: &SessionId,
        session: Arc<SessionState>,
        writes_at_join: u64,
    ) -> Claim {
        Claim {
            non_sticky: Arc::clone(non_sticky),
            key: key.as_str().into(),
            session,
            writes_at_join,
            released: false,
        }
    }

    pub(crate) fn session(&self) -> &Arc<SessionState> {
        &self.session
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        let non_sticky = Arc::clone(&self.non_sticky);
        let key = std::mem::take(&mut self.key);
        let writes_at_join = self.writes_at_join;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = count_out(&non_sticky, &key, writes_at_join, false).await {
                        tracing::warn!(%error, "finishing the session of a cancelled request");
                    }
                });
            }
            // No runtime (shutting down): count out here; the lock, if this
            // was the last user, is released by its own drop or expires.
            Err(_) => {
                let mut map = non_sticky.inflight.by_id.lock();
                match map.get_mut(&*key) {
                    Some(entry) if entry.users > 1 => entry.users -= 1,
                    Some(_) => drop(map.remove(&*key)),
                    None => {}
                }
            }
        }
    }
}

/// Finds the session `id` for a request, sharing it with the requests of
/// this instance already using it; takes the lock first when `wants_lock`.
pub(crate) async fn resolve(
    non_sticky: &Arc<NonSticky>,
    id: &SessionId,
    wants_lock: bool,
) -> Result<Option<Claim>, Error> {
    let _one_at_a_time = non_sticky.id_gates.enter(id.as_str()).await;
    join_or_load(non_sticky, id, wants_lock).await
}

async fn join_or_load(non_sticky: &Arc<NonSticky>, id: &SessionId, wants_lock: bool) -> Result<Option<Claim>, Error> {
    let present = non_sticky.inflight.by_id.lock().get(id.as_str()).map(|entry| {
        let inner = entry.session.inner.lock();
        // Logged out, or given a new id (login) by a request still sharing
        // it: the old id is dead, here as in memcached.
        let gone = inner.is_ended() || !id.as_str().starts_with(inner.id().random_part());
        (entry.lock.is_some(), gone)
    });
    if let Some((_, true)) = present {
        Stats::count(&non_sticky.stats.counters.unknown_session_ids);
        return Ok(None);
    }
    if let Some((locked, false)) = present {
        // Loaded without the lock: take it now, but keep the non_sticky copy as
        // it was loaded. Co-users may have read it already; if another
        // request changed the session since, every write of this copy is
        // refused by its CAS token (never refreshed from a newer read).
        let lock = match wants_lock && !locked {
            false => None,
            true => lock_for(non_sticky, id).await?.0,
        };
        let mut map = non_sticky.inflight.by_id.lock();
        if let Some(entry) = map.get_mut(id.as_str()) {
            if lock.is_some() {
                entry.lock = lock;
            }
            entry.users += 1;
            return Ok(Some(Claim::new(non_sticky, id, entry.session.clone(), entry.writes)));
        }
        // The entry cannot vanish while we hold the gate; fall through defensively.
    }
    let (lock, first_read) = if wants_lock {
        lock_for(non_sticky, id).await?
    } else {
        (None, None)
    };
    match load(non_sticky, id, first_read).await {
        Ok(Some((session, load))) => {
            let session = Arc::new(session);
            non_sticky.inflight.by_id.lock().insert(
                id.as_str().into(),
                InFlight {
                    session: session.clone(),
                    users: 1,
                    lock,
                    load,
                    writes: 0,
                    poisoned: false,
                },
            );
            Ok(Some(Claim::new(non_sticky, id, session, 0)))
        }
        other => {
            if let Some(lock) = lock {
                crate::non_sticky::lock::release(lock).await;
            }
            other.map(|_| None)
        }
    }
}

/// Ends one request's use of an in-flight session. A request that
/// changed the session writes it (with every change made to the non_sticky
/// copy so far) before it answers — acknowledged means stored, also when
/// other requests of this instance share the session; the last user also
/// writes whatever is still due, deletes it if invalidated and releases
/// the lock. `Err(LockLost)` when the lock expired under the request:
/// nothing is written, so no concurrent writer is overwritten.
pub(crate) async fn release(
    non_sticky: &Arc<NonSticky>,
    mut claim: Claim,
    method: &str,
    path: &str,
    changed: bool,
) -> Result<(), Error> {
    if !changed {
        Stats::count(&non_sticky.stats.counters.read_only_requests);
    }
    if matches!(
        non_sticky.config.locking_mode,
        crate::config::locking_mode::LockingMode::Auto
    ) {
        non_sticky.lock_policy.learn(method, path, changed);
    }
    // The write runs in a task of its own: a client hanging up mid-way
    // cannot leave the primary written and the backup not (or a relocation
    // without its forward records, or a logout half done).
    claim.released = true;
    let key = std::mem::take(&mut claim.key);
    let writes_at_join = claim.writes_at_join;
    let non_sticky = Arc::clone(non_sticky);
    run_to_completion(async move { count_out(&non_sticky, &key, writes_at_join, changed).await }).await
}

/// [`run_detached`] for a session write: a runtime shutting down before it
/// finished leaves its outcome unknown.
async fn run_to_completion<T: Send + 'static>(
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    run_detached(work).await.unwrap_or_else(|| {
        Err(Error::Backend {
            node: "-".to_owned(),
            source: crate::error::BackendError::Ambiguous("the runtime shut down during a session write".to_owned()),
        })
    })
}

/// [`count_out_gated`] after taking the id's gate.
async fn count_out(non_sticky: &Arc<NonSticky>, key: &str, writes_at_join: u64, changed: bool) -> Result<(), Error> {
    let _one_at_a_time = non_sticky.id_gates.enter(key).await;
    count_out_gated(non_sticky, key, writes_at_join, changed).await
}

/// Takes one user out of the in-flight entry `key` (the caller holds the
/// id's gate, so no other request of this instance loads the session while
/// it is being written) and writes what its request needs: a user that
/// `changed` the session writes the non_sticky copy before it answers; the
/// last user finishes the session. When a co-user's write since this user
/// joined may have carried its change, a failure is reported as "may have
/// been saved" (`504`), never as "nothing saved" (`503`).
async fn count_out_gated(
    non_sticky: &Arc<NonSticky>,
    key: &str,
    writes_at_join: u64,
    changed: bool,
) -> Result<(), Error> {
    /// What this user has to do once counted out.
    enum Then {
        Nothing,
        /// The non_sticky copy was refused already: so is this change.
        Refused,
        /// Write the non_sticky copy others still use (their lock stays).
        Write(Arc<SessionState>, LoadInfo, bool),
        /// The last user: finish the session.
        Finish(InFlight),
    }
    let (then, co_user_wrote) = {
        let mut map = non_sticky.inflight.by_id.lock();
        match map.get_mut(key) {
            None => (Then::Nothing, false),
            Some(entry) if entry.users > 1 => {
                entry.users -= 1;
                let co_user_wrote = entry.writes > writes_at_join;
                if changed && entry.poisoned {
                    (Then::Refused, co_user_wrote)
                } else if changed {
                    let lost = entry.lock.as_ref().is_some_and(HeldLock::is_lost);
                    (Then::Write(entry.session.clone(), entry.load, lost), co_user_wrote)
                } else {
                    (Then::Nothing, co_user_wrote)
                }
            }
            Some(_) => {
                let entry = map.remove(key);
                let co_user_wrote = entry.as_ref().is_some_and(|e| e.writes > writes_at_join);
                (entry.map_or(Then::Nothing, Then::Finish), co_user_wrote)
            }
        }
    };
    let result = match then {
        Then::Nothing => Ok(()),
        Then::Refused => Err(Error::Conflict),
        Then::Write(_, _, true) => {
            // Answered "nothing saved": the change must never be stored by
            // a later write of the non_sticky copy either.
            if let Some(entry) = non_sticky.inflight.by_id.lock().get_mut(key) {
                entry.poisoned = true;
            }
            Err(Error::LockLost)
        }
        Then::Write(session, load, false) => {
            let version = session.inner.lock().version();
            let written = write_back(non_sticky, &session, load, None).await;
            let mut map = non_sticky.inflight.by_id.lock();
            let entry = map.get_mut(key);
            match (written, entry) {
                (Ok(cas), Some(entry)) => {
                    // The copy in memcached is current: later writers need
                    // not re-create or relocate it again, and write on top
                    // of this write.
                    entry.load = entry.load.after_write(version, cas);
                    entry.writes += 1;
                    Ok(())
                }
                (Err(Error::Conflict), Some(entry)) => {
                    entry.poisoned = true;
                    Err(Error::Conflict)
                }
                (Err(error @ Error::OutcomeUnknown { .. }), Some(entry)) => {
                    // It may have landed, with the co-users' changes in it.
                    entry.writes += 1;
                    Err(error)
                }
                (Err(error), Some(entry)) => {
                    // Answered "nothing saved" (503): a later write of the
                    // non_sticky copy must not store the change after all.
                    entry.poisoned = true;
                    Err(error)
                }
                (written, None) => written.map(drop),
            }
        }
        Then::Finish(entry) => finish_session(non_sticky, entry, changed).await,
    };
    match result {
        Err(error) if changed && co_user_wrote => Err(maybe_saved(error)),
        other => other,
    }
}

/// A failure after a co-user's write that may have carried this request's
/// change.
fn maybe_saved(error: Error) -> Error {
    match error {
        Error::Backend { node, source } => Error::OutcomeUnknown { node, source },
        Error::OutcomeUnknown { .. } => error,
        other => Error::OutcomeUnknown {
            node: "-".to_owned(),
            source: crate::error::BackendError::Ambiguous(format!(
                "{other}; a concurrent request of this instance wrote the session with this change before"
            )),
        },
    }
}

async fn finish_session(non_sticky: &Arc<NonSticky>, entry: InFlight, changed: bool) -> Result<(), Error> {
    let lost = entry.lock.as_ref().is_some_and(HeldLock::is_lost);
    let result = if entry.poisoned {
        // A write of this copy was refused: it holds changes that must not
        // be stored; only a change of this request is refused too.
        if changed { Err(Error::Conflict) } else { Ok(()) }
    } else if lost && changed {
        Err(Error::LockLost)
    } else if lost {
        // This request changed nothing, and the co-users that did wrote
        // before they answered: nothing to save, nothing to refuse.
        Ok(())
    } else {
        // The lock is let go of inside, in the backup's round trip.
        return write_back(non_sticky, &entry.session, entry.load, entry.lock)
            .await
            .map(drop);
    };
    if let Some(lock) = entry.lock {
        crate::non_sticky::lock::release(lock).await;
    }
    result
}

/// Writes a session created by this request (in a task of its own, so a
/// hang-up cannot leave it half written).
pub(crate) async fn store_new(non_sticky: &Arc<NonSticky>, session: &Arc<SessionState>) -> Result<(), Error> {
    let load = LoadInfo {
        new: true,
        ..LoadInfo::default()
    };
    let (non_sticky, session) = (Arc::clone(non_sticky), Arc::clone(session));
    run_to_completion(async move { write_back(&non_sticky, &session, load, None).await.map(drop) }).await
}
