//! Non-sticky mode: every request that uses a session loads it from
//! memcached and writes it back at its end if it changed; no instance owns
//! a session, so a load balancer may send any request anywhere.
//!
//! Keys of a session with id `I` (prefix `P`):
//!
//! | key | node | TTL | what |
//! |---|---|---|---|
//! | `P I` | primary (named in `I`) | 2 × maxInactive | the session |
//! | `validity:P I` | primary | maxInactive | the validity record: its TTL is the inactivity clock |
//! | `bak:P I`, `bak:validity:P I` | next available node in the ring | same | the backup copies |
//! | `lock:P <random part of I>` | primary (or where it moves) | lockExpiration | the lock |
//!
//! Operations per request kind (R = round trip; reads of one request go out
//! in parallel):
//!
//! * **read-only** (session used, not changed): `get` session + `touch`
//!   validity on the primary, `touch` backup validity on the backup node =
//!   3 operations, 1 R. The touches slide the inactivity clock; the backup
//!   touch also tells whether the backup copy still exists.
//! * **modifying**: the read above, then `set` session + `set` validity on
//!   the primary and the same two on the backup node, in parallel = 7
//!   operations, 2 R.
//! * **with a lock**: + `add` lock before and `delete` lock after (CAS
//!   guarded) = 2 more operations, 2 more R.
//! * **request carrying the id without using the session**: `touch`
//!   validity + `touch` backup validity after the response = 2 operations.
//! * With a **single node** there is no backup: read-only 2, modifying 4.
//!
//! The session itself is rewritten at least once per half inactivity
//! interval even when unchanged, so it always outlives its validity record.
//!
//! A primary that lost the session (restarted empty) is re-created from the
//! backup; a missing backup is re-created from the primary. When the
//! primary node is down, the backup is read from the next available node
//! in the ring (walking further if that one is down too), the id is
//! relocated to that node, and new primary and backup copies are written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::Instant;

use self::lock::HeldLock;
use crate::backend::{Expiry, Item, WriteMode, WriteOutcome};
use crate::envelope::{self, SessionRecord};
use crate::error::Error;
use crate::locking_mode::LockFailure;
use crate::manager::Shared;
use crate::nodes::NodeIndex;
use crate::session_id::SessionId;
use crate::session_state::{SessionState, StoredMark, unix_ms};
use crate::stats::Stats;
use crate::validity::Validity;

pub(crate) mod lock;
pub(crate) mod lock_policy;

/// What a load found out about a session's copies.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LoadInfo {
    /// Created by this request: nothing stored yet.
    new: bool,
    /// The primary copy must be (re-)written: lost by its node, or relocated.
    primary_missing: bool,
    /// The backup copy must be re-written.
    backup_missing: bool,
    /// When the session was last written (from the stored record).
    written_ms: u64,
    /// The session's version in the last write by this instance (0: as
    /// loaded): a change is what came after it.
    version_written: u64,
    /// CAS token of the primary copy as read (or last written) here, with
    /// the key it belongs to: the next write of that key is conditional on
    /// it. Any other key (new session, re-created from the backup,
    /// relocated, new id) is written with an add.
    cas: Option<(u64, u64)>,
}

impl LoadInfo {
    /// What is left to do once the session was written.
    fn after_write(self, version: u64, cas: Option<(u64, u64)>) -> LoadInfo {
        LoadInfo {
            written_ms: unix_ms(SystemTime::now()),
            version_written: version,
            cas: cas.or(self.cas),
            ..LoadInfo::default()
        }
    }
}

/// A session in use by requests of this instance.
struct InFlight {
    session: Arc<SessionState>,
    users: usize,
    lock: Option<HeldLock>,
    load: LoadInfo,
    /// Writes of the shared copy made (or perhaps made: unconfirmed) by
    /// users that finished before the last one.
    writes: u64,
    /// A write of the shared copy was refused (another request changed the
    /// session): the copy holds changes that must never be stored.
    poisoned: bool,
}

/// The sessions non-sticky requests of this instance are using right now.
#[derive(Default)]
pub(crate) struct InFlightSessions {
    by_id: Mutex<HashMap<Box<str>, InFlight>>,
}

impl InFlightSessions {
    pub(crate) fn len(&self) -> usize {
        self.by_id.lock().len()
    }
}

/// One request's share of an in-flight session. Hand it back with
/// [`release`]; a claim dropped without that (its request was cancelled)
/// is counted out in the background, so its in-flight entry and lock never
/// linger.
pub(crate) struct Claim {
    shared: Arc<Shared>,
    /// The id the session was loaded under (its key in the in-flight map).
    key: Box<str>,
    session: Arc<SessionState>,
    /// The entry's write count when this request joined: a later write by
    /// a co-user may have carried this request's change.
    writes_at_join: u64,
    /// Counted out of the in-flight entry already.
    released: bool,
}

impl Claim {
    fn new(shared: &Arc<Shared>, key: &SessionId, session: Arc<SessionState>, writes_at_join: u64) -> Claim {
        Claim {
            shared: Arc::clone(shared),
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
        let shared = Arc::clone(&self.shared);
        let key = std::mem::take(&mut self.key);
        let writes_at_join = self.writes_at_join;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = count_out(&shared, &key, writes_at_join, false).await {
                        tracing::warn!(%error, "finishing the session of a cancelled request");
                    }
                });
            }
            // No runtime (shutting down): count out here; the lock, if this
            // was the last user, is released by its own drop or expires.
            Err(_) => {
                let mut map = shared.inflight.by_id.lock();
                match map.get_mut(&*key) {
                    Some(entry) if entry.users > 1 => entry.users -= 1,
                    Some(_) => drop(map.remove(&*key)),
                    None => {}
                }
            }
        }
    }
}

fn data_expiry(max_inactive: Option<Duration>) -> Expiry {
    max_inactive.map_or(Expiry::Never, |max| Expiry::After(max * 2))
}

fn validity_expiry(max_inactive: Option<Duration>) -> Expiry {
    max_inactive.map_or(Expiry::Never, Expiry::After)
}

/// Finds the session `id` for a request, sharing it with the requests of
/// this instance already using it; takes the lock first when `wants_lock`.
pub(crate) async fn resolve(shared: &Arc<Shared>, id: &SessionId, wants_lock: bool) -> Result<Option<Claim>, Error> {
    let _one_at_a_time = shared.enter_id_gate(id.as_str()).await;
    join_or_load(shared, id, wants_lock).await
}

async fn join_or_load(shared: &Arc<Shared>, id: &SessionId, wants_lock: bool) -> Result<Option<Claim>, Error> {
    let present = shared.inflight.by_id.lock().get(id.as_str()).map(|entry| {
        let inner = entry.session.inner.lock();
        // Logged out, or given a new id (login) by a request still sharing
        // it: the old id is dead, here as in memcached.
        let gone = inner.invalidated || !id.as_str().starts_with(inner.id.random_part());
        (entry.lock.is_some(), gone)
    });
    if let Some((_, true)) = present {
        Stats::count(&shared.stats.counters.unknown_session_ids);
        return Ok(None);
    }
    if let Some((locked, false)) = present {
        let lock = if wants_lock && !locked {
            lock_for(shared, id).await?
        } else {
            None
        };
        // Loaded without the lock: read it again under the lock, or give
        // the lock back and say why.
        let mut lock = lock;
        let reload = match lock.take() {
            None => None,
            Some(held) => match load(shared, id).await {
                Ok(Some(fresh)) => {
                    lock = Some(held);
                    Some(fresh)
                }
                Ok(None) => {
                    lock::release(held).await;
                    return Ok(None);
                }
                Err(error) => {
                    lock::release(held).await;
                    return Err(error);
                }
            },
        };
        let mut map = shared.inflight.by_id.lock();
        if let Some(entry) = map.get_mut(id.as_str()) {
            if lock.is_some() {
                entry.lock = lock;
                // Loaded without the lock: refresh it unless it was changed meanwhile.
                if let Some((fresh, load)) = reload {
                    let mut inner = entry.session.inner.lock();
                    if inner.version == 0 && !inner.invalidated {
                        let fresh_attributes = std::mem::take(&mut fresh.inner.lock().attributes);
                        inner.clear_attributes();
                        for (key, value) in fresh_attributes {
                            inner.set_attribute(&key, value);
                        }
                        inner.version = 0;
                        entry.load = load;
                    }
                }
            }
            entry.users += 1;
            return Ok(Some(Claim::new(shared, id, entry.session.clone(), entry.writes)));
        }
        // The entry cannot vanish while we hold the gate; fall through defensively.
    }
    let lock = if wants_lock { lock_for(shared, id).await? } else { None };
    match load(shared, id).await {
        Ok(Some((session, load))) => {
            let session = Arc::new(session);
            shared.inflight.by_id.lock().insert(
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
            Ok(Some(Claim::new(shared, id, session, 0)))
        }
        other => {
            if let Some(lock) = lock {
                lock::release(lock).await;
            }
            other.map(|_| None)
        }
    }
}

/// Takes the lock of `id`'s session, applying `lockFailure` when it cannot.
async fn lock_for(shared: &Arc<Shared>, id: &SessionId) -> Result<Option<HeldLock>, Error> {
    let Some(primary) = shared.node_index(id) else {
        return Ok(None);
    };
    let mut outcome = Ok(None);
    // A node found dead while locking is marked down: lock on the next
    // (where the session is about to be relocated).
    for _ in 0..shared.nodes.iter().count() {
        let Some(home) = shared.nodes.home_of(primary) else {
            return Ok(None);
        };
        outcome = lock::acquire(shared, home, shared.lock_key(id)).await;
        if !matches!(&outcome, Err(error) if error.is_unavailable()) {
            break;
        }
    }
    match (outcome, shared.config.lock_failure) {
        (Ok(Some(lock)), _) => Ok(Some(lock)),
        (Ok(None), LockFailure::Fail) => Err(Error::LockUnavailable),
        (Err(error), LockFailure::Fail) => Err(error),
        (failed, LockFailure::Proceed) => {
            let reason = failed.err().map_or_else(|| "timed out".to_owned(), |e| e.to_string());
            tracing::warn!(%reason, "session lock not acquired; proceeding without it (lockFailure=proceed)");
            Ok(None)
        }
    }
}

/// A session read from memcached under `stored_as`, given the id `id`
/// (different when relocated: the old keys then become obsolete).
fn loaded(stored_as: &SessionId, id: SessionId, record: SessionRecord, load: LoadInfo) -> (SessionState, LoadInfo) {
    let load = LoadInfo {
        written_ms: record.last_accessed_ms,
        ..load
    };
    // Marked as stored under its old id, so cycle_id or relocation makes
    // those keys obsolete.
    let stored = StoredMark {
        id: stored_as.clone(),
        version: 0,
        epoch: 0,
        expires_at: None,
    };
    let session = SessionState::from_record(id, record, Some(stored));
    {
        let mut inner = session.inner.lock();
        inner.announced = true;
        inner.mark_obsolete(stored_as.clone());
    }
    (session, load)
}

/// Loads a session from its primary node, or from a backup node when the
/// primary is down or lost it.
async fn load(shared: &Arc<Shared>, id: &SessionId) -> Result<Option<(SessionState, LoadInfo)>, Error> {
    let counters = &shared.stats.counters;
    let Some(primary) = shared.node_index(id) else {
        Stats::count(&counters.unknown_session_ids);
        return Ok(None);
    };
    let max_inactive = shared.config.max_inactive;
    let started = Instant::now();
    // Why the session could not be read where it may be; when neither its
    // node nor its backup's node answered (down, frozen), the session may
    // well exist, and "no session" would be a lie: 503 instead.
    let unanswered: Error;
    if shared.nodes.get(primary).is_available() {
        let node = shared.nodes.get(primary);
        let backup = shared.nodes.next_available(primary);
        let (data_key, validity_key) = (shared.session_key(id), shared.validity_key(id));
        let backup_validity_key = shared.backup_validity_key(id);
        let (primary_read, backup_valid) = tokio::join!(
            node.call(|b| b.get_and_touch_other(&data_key, &validity_key, validity_expiry(max_inactive))),
            async {
                match backup {
                    Some(b) => Some(
                        shared
                            .nodes
                            .get(b)
                            .call(|n| n.touch(&backup_validity_key, validity_expiry(max_inactive)))
                            .await,
                    ),
                    None => None,
                }
            }
        );
        shared.stats.load_time.record_duration(started.elapsed());
        let backup_missing = backup_valid.as_ref().is_some_and(|v| !matches!(v, Ok(true)));
        let (data, valid) = match primary_read {
            Ok((data, valid)) => (Ok(data), Ok(valid)),
            Err(error) => (Err(error), Ok(false)),
        };
        match (data, valid) {
            (Ok(Some(stored)), Ok(true)) => {
                Stats::count(&counters.loads);
                let Some(record) = shared.read_record(&data_key, &stored.value, primary) else {
                    return Ok(None);
                };
                let load = LoadInfo {
                    backup_missing,
                    cas: Some((key_tag(&data_key), stored.cas)),
                    ..LoadInfo::default()
                };
                return Ok(Some(loaded(id, id.clone(), record, load)));
            }
            (Ok(Some(_)), Ok(false)) => {
                // Expired: the validity record is gone.
                Stats::count(&counters.sessions_expired);
                // Best effort: an expired session is gone either way.
                let _ = delete_session_keys(shared, id).await;
                return Ok(None);
            }
            (Ok(None), Ok(_)) => {
                if let Some(Err(error)) = backup_valid {
                    // Not on its node (restarted empty?) and its backup's
                    // node did not answer: it may exist there.
                    Stats::count(&counters.load_failures);
                    return Err(error);
                }
                if !matches!(backup_valid, Some(Ok(true))) {
                    Stats::count(&counters.load_misses);
                    Stats::count(&counters.unknown_session_ids);
                    return Ok(None);
                }
                // The primary lost it (restarted empty): take the backup.
                let backup = backup.expect("a backup validity answer implies a backup node");
                return load_backup(shared, id, backup, id.clone()).await;
            }
            (Err(error), _) | (_, Err(error)) => {
                if !error.is_unavailable() {
                    Stats::count(&counters.load_failures);
                    return Err(error);
                }
                // The primary just failed: fall through to the backups.
                unanswered = error;
            }
        }
    } else {
        unanswered = unavailable(shared, primary);
    }
    // Only the node after the primary in the ring (where the backup is
    // written while it is up) answering "not here" settles it.
    let designated_backup = shared.nodes.ring_after(primary).next();
    let mut answered = false;
    for candidate in shared.nodes.ring_after(primary) {
        if !shared.nodes.get(candidate).is_available() {
            continue;
        }
        let relocated = id.with_location(shared.nodes.get(candidate).spec.id.as_ref(), shared.config.route());
        match load_backup(shared, id, candidate, relocated).await {
            Ok(Some(found)) => {
                Stats::count(&counters.relocations);
                tracing::info!(
                    from = %shared.nodes.get(primary).label(),
                    to = %shared.nodes.get(candidate).label(),
                    "primary node down; session read from its backup and relocated"
                );
                return Ok(Some(found));
            }
            Ok(None) => {
                answered |= Some(candidate) == designated_backup;
                continue;
            }
            Err(error) if error.is_unavailable() => continue,
            Err(error) => return Err(error),
        }
    }
    if !answered {
        Stats::count(&counters.load_failures);
        return Err(unanswered);
    }
    Stats::count(&counters.load_misses);
    Stats::count(&counters.unknown_session_ids);
    Ok(None)
}

/// "Node `index` is unavailable", as a request error (`503`).
fn unavailable(shared: &Shared, index: NodeIndex) -> Error {
    Error::Backend {
        node: shared.nodes.get(index).label(),
        source: crate::error::BackendError::Unreachable("the node is marked unavailable".to_owned()),
    }
}

/// Reads the backup copy of `id` on `node`; the session gets `new_id`.
async fn load_backup(
    shared: &Arc<Shared>,
    id: &SessionId,
    node: NodeIndex,
    new_id: SessionId,
) -> Result<Option<(SessionState, LoadInfo)>, Error> {
    let handle = shared.nodes.get(node);
    let (data_key, validity_key) = (shared.backup_key(id), shared.backup_validity_key(id));
    let expiry = validity_expiry(shared.config.max_inactive);
    let (data, valid) = handle
        .call(|b| b.get_and_touch_other(&data_key, &validity_key, expiry))
        .await?;
    let (Some(bytes), true) = (data, valid) else {
        return Ok(None);
    };
    let Some(record) = shared.read_record(&data_key, &bytes.value, node) else {
        return Ok(None);
    };
    Stats::count(&shared.stats.counters.backup_node_loads);
    Stats::count(&shared.stats.counters.loads);
    let load = LoadInfo {
        primary_missing: true,
        ..LoadInfo::default()
    };
    Ok(Some(loaded(id, new_id, record, load)))
}

/// Ends one request's use of an in-flight session. A request that
/// changed the session writes it (with every change made to the shared
/// copy so far) before it answers — acknowledged means stored, also when
/// other requests of this instance share the session; the last user also
/// writes whatever is still due, deletes it if invalidated and releases
/// the lock. `Err(LockLost)` when the lock expired under the request:
/// nothing is written, so no concurrent writer is overwritten.
pub(crate) async fn release(
    shared: &Arc<Shared>,
    mut claim: Claim,
    method: &str,
    path: &str,
    changed: bool,
) -> Result<(), Error> {
    if !changed {
        Stats::count(&shared.stats.counters.read_only_requests);
    }
    if matches!(shared.config.locking_mode, crate::LockingMode::Auto) {
        shared.lock_policy.learn(method, path, changed);
    }
    // Cancelled while waiting for the gate: the claim's drop counts it out.
    let _one_at_a_time = shared.enter_id_gate(&claim.key).await;
    // From here on it is counted out before the next await.
    claim.released = true;
    count_out_gated(shared, &claim.key, claim.writes_at_join, changed).await
}

/// [`count_out_gated`] after taking the id's gate.
async fn count_out(shared: &Arc<Shared>, key: &str, writes_at_join: u64, changed: bool) -> Result<(), Error> {
    let _one_at_a_time = shared.enter_id_gate(key).await;
    count_out_gated(shared, key, writes_at_join, changed).await
}

/// Takes one user out of the in-flight entry `key` (the caller holds the
/// id's gate, so no other request of this instance loads the session while
/// it is being written) and writes what its request needs: a user that
/// `changed` the session writes the shared copy before it answers; the
/// last user finishes the session. When a co-user's write since this user
/// joined may have carried its change, a failure is reported as "may have
/// been saved" (`504`), never as "nothing saved" (`503`).
async fn count_out_gated(shared: &Arc<Shared>, key: &str, writes_at_join: u64, changed: bool) -> Result<(), Error> {
    /// What this user has to do once counted out.
    enum Then {
        Nothing,
        /// The shared copy was refused already: so is this change.
        Refused,
        /// Write the shared copy others still use (their lock stays).
        Write(Arc<SessionState>, LoadInfo, bool),
        /// The last user: finish the session.
        Finish(InFlight),
    }
    let (then, co_user_wrote) = {
        let mut map = shared.inflight.by_id.lock();
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
        Then::Write(_, _, true) => Err(Error::LockLost),
        Then::Write(session, load, false) => {
            let version = session.inner.lock().version;
            let written = store(shared, &session, load).await;
            let mut map = shared.inflight.by_id.lock();
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
                (written, _) => written.map(drop),
            }
        }
        Then::Finish(entry) => finish_session(shared, entry, changed).await,
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

async fn finish_session(shared: &Arc<Shared>, entry: InFlight, changed: bool) -> Result<(), Error> {
    let lost = entry.lock.as_ref().is_some_and(HeldLock::is_lost);
    let result = if entry.poisoned {
        // A write of this copy was refused: it holds changes that must not
        // be stored; only a change of this request is refused too.
        if changed { Err(Error::Conflict) } else { Ok(()) }
    } else if lost {
        Err(Error::LockLost)
    } else {
        store(shared, &entry.session, entry.load).await.map(drop)
    };
    if let Some(lock) = entry.lock {
        lock::release(lock).await;
    }
    result
}

/// Writes a session created by this request.
pub(crate) async fn store_new(shared: &Arc<Shared>, session: &Arc<SessionState>) -> Result<(), Error> {
    let load = LoadInfo {
        new: true,
        ..LoadInfo::default()
    };
    store(shared, session, load).await.map(drop)
}

/// Brings memcached in line with the session: delete it (invalidated),
/// write both copies (changed, new, relocated, primary lost, or due for its
/// periodic rewrite), re-create a lost backup, or nothing (read-only).
///
/// `Err` when the change is not durable: no node to write to, or the
/// primary write failed while its node still answers (a `SERVER_ERROR`), or
/// both copies failed. A primary that is down while the backup was written
/// is fine: the next request reads the backup.
async fn store(shared: &Arc<Shared>, session: &SessionState, load: LoadInfo) -> Result<Option<(u64, u64)>, Error> {
    let counters = &shared.stats.counters;
    let max_inactive = shared.config.max_inactive;
    let (id, invalidated, changed, obsolete) = {
        let inner = session.inner.lock();
        let changed = inner.version != load.version_written;
        (inner.id.clone(), inner.invalidated, changed, inner.obsolete_ids.clone())
    };
    if invalidated {
        // A logout is acknowledged only once the session's copies are
        // gone; otherwise it could come back with its node (504: retry).
        let mut outcome = Ok(());
        for old in obsolete.iter().chain(std::iter::once(&id)) {
            let deleted = delete_session_keys(shared, old).await;
            // Copies under ids the session left (relocated off a dead
            // node) are best effort; its current copy must go.
            if let (Err(error), true) = (deleted, *old == id) {
                outcome = Err(error);
            }
        }
        return outcome.map(|()| None).map_err(|error| match error {
            Error::Backend { node, source } => Error::OutcomeUnknown { node, source },
            other => other,
        });
    }
    let now_ms = unix_ms(SystemTime::now());
    let due = max_inactive.is_some_and(|max| {
        now_ms.saturating_sub(load.written_ms) >= u64::try_from(max.as_millis() / 2).unwrap_or(u64::MAX)
    });
    let write_primary = changed || due || load.new || load.primary_missing || !obsolete.is_empty();
    if !write_primary && !load.backup_missing {
        Stats::count(&counters.backups_skipped);
        return Ok(None);
    }
    let relocated = !obsolete.is_empty();
    if (load.primary_missing && !relocated) || (load.backup_missing && !changed && !load.new) {
        Stats::count(&counters.backups_recreated);
    }
    let Some(primary) = shared.node_index(&id) else {
        // Created while no node was available: nowhere to keep it.
        Stats::count(&counters.backups_failed);
        return Err(Error::Backend {
            node: "none".to_owned(),
            source: crate::error::BackendError::Unreachable("no memcached node is available".to_owned()),
        });
    };
    let bytes = {
        let mut inner = session.inner.lock();
        inner.last_accessed_ms = now_ms;
        let started = Instant::now();
        let bytes = envelope::encode(inner.record());
        shared.stats.serialization_time.record_duration(started.elapsed());
        bytes
    };
    shared.stats.session_size.record(bytes.len() as u64);
    let validity = Validity {
        max_inactive_secs: max_inactive.map_or(0, |d| d.as_secs()),
        last_written_ms: now_ms,
    }
    .encode();
    let backup = shared.nodes.next_available(primary);
    let data_key = shared.session_key(&id);
    // Never over a newer copy: conditional on the token it was read with.
    let primary_mode = match load.cas {
        Some((tag, cas)) if tag == key_tag(&data_key) => WriteMode::IfCas(cas),
        _ => WriteMode::Add,
    };
    let started = Instant::now();
    let primary_keys = || (shared.session_key(&id), shared.validity_key(&id));
    let backup_keys = || (shared.backup_key(&id), shared.backup_validity_key(&id));
    let outcome = if changed || load.new || relocated {
        // The primary first, conditionally; the backup only once the
        // primary kept this write, so a refused or unconfirmed write never
        // reaches the backup (where a later failover would find it).
        match write_copy(shared, primary, primary_keys(), &bytes, &validity, primary_mode).await {
            Ok(WriteOutcome::Refused) if !changed && !load.new => {
                // Relocating (or re-keying) an unchanged session that
                // another request already moved or changed: nothing of
                // this request is lost.
                Ok(None)
            }
            Ok(WriteOutcome::Refused) => {
                // Another request changed the session since it was read:
                // nothing of this one is kept.
                Stats::count(&counters.write_conflicts);
                Err(Error::Conflict)
            }
            Ok(WriteOutcome::Stored(cas)) => {
                let backup_written = match backup {
                    None => Ok(WriteOutcome::Stored(0)),
                    Some(backup) => write_copy(shared, backup, backup_keys(), &bytes, &validity, WriteMode::Set).await,
                };
                match backup_written {
                    Ok(_) => Stats::count(&counters.backups_written),
                    Err(error) => {
                        Stats::count(&counters.backups_failed);
                        tracing::warn!(%error, "writing a non-sticky backup copy failed; the primary copy is written");
                    }
                }
                Ok(Some((key_tag(&data_key), cas)))
            }
            Err(error) => {
                Stats::count(&counters.backups_failed);
                tracing::error!(%error, "a non-sticky session could not be saved");
                // A write that may have landed is a 504, never a 503.
                Err(outcome_unknown(error))
            }
        }
    } else {
        // Unchanged (read-only request): re-create what is missing, or
        // rewrite what is due — never over a newer copy, and the backup
        // only after the primary was kept, so an older copy read here never
        // replaces a newer write of another request.
        let mut primary_kept = !write_primary;
        let mut new_cas = None;
        if write_primary {
            match write_copy(shared, primary, primary_keys(), &bytes, &validity, primary_mode).await {
                Ok(WriteOutcome::Stored(cas)) => {
                    primary_kept = true;
                    new_cas = Some(cas);
                }
                // Changed meanwhile: that write refreshed both copies.
                Ok(WriteOutcome::Refused) => {}
                Err(error) => tracing::warn!(%error, "refreshing a non-sticky session failed"),
            }
        }
        let mut wrote = new_cas.is_some();
        if let Some(backup) = backup.filter(|_| primary_kept && (write_primary || load.backup_missing)) {
            let mode = if write_primary { WriteMode::Set } else { WriteMode::Add };
            match write_copy(shared, backup, backup_keys(), &bytes, &validity, mode).await {
                Ok(outcome) => wrote |= outcome != WriteOutcome::Refused,
                Err(error) => {
                    Stats::count(&counters.backups_failed);
                    tracing::warn!(%error, "re-creating a non-sticky backup copy failed");
                }
            }
        }
        if wrote {
            Stats::count(&counters.backups_written);
        }
        Ok(new_cas.map(|cas| (key_tag(&data_key), cas)))
    };
    shared.stats.backup_time.record_duration(started.elapsed());
    for old in obsolete.iter().filter(|old| **old != id) {
        // Best effort: the session moved on to `id`.
        let _ = delete_session_keys(shared, old).await;
    }
    outcome
}

/// A short fingerprint of a storage key, to tell which key a CAS token
/// belongs to.
fn key_tag(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// A failed write that may still have been carried out is reported as
/// such (`504`), never as "nothing saved" (`503`).
fn outcome_unknown(error: Error) -> Error {
    match error {
        Error::Backend { node, source } if source.may_have_been_applied() => Error::OutcomeUnknown { node, source },
        other => other,
    }
}

/// Writes one copy of a session (data + validity record) to `node`, in one
/// pipelined exchange; the data is sealed for its key when configured.
async fn write_copy(
    shared: &Shared,
    node: NodeIndex,
    (data_key, validity_key): (String, String),
    bytes: &[u8],
    validity: &[u8],
    mode: WriteMode,
) -> Result<WriteOutcome, Error> {
    let max_inactive = shared.config.max_inactive;
    let sealed = shared.seal(&data_key, bytes);
    let data = Item {
        key: &data_key,
        value: &sealed,
        expiry: data_expiry(max_inactive),
    };
    let validity = Item {
        key: &validity_key,
        value: validity,
        expiry: validity_expiry(max_inactive),
    };
    shared
        .nodes
        .get(node)
        .call(|b| b.set_pair_as(data, mode, validity))
        .await
}

/// Deletes the session, validity and backup keys of `id` (best effort;
/// unavailable nodes are skipped). `Err` when the session's own copy may
/// still be there: its node is down, or a delete of it failed.
pub(crate) async fn delete_session_keys(shared: &Shared, id: &SessionId) -> Result<(), Error> {
    let Some(primary) = shared.node_index(id) else {
        return Ok(());
    };
    let mut outcome = if shared.nodes.get(primary).is_available() {
        Ok(())
    } else {
        Err(unavailable(shared, primary))
    };
    let primary_keys = [shared.session_key(id), shared.validity_key(id)];
    let backup_keys = [shared.backup_key(id), shared.backup_validity_key(id)];
    let mut targets: Vec<(NodeIndex, &[String; 2])> = Vec::new();
    if shared.nodes.get(primary).is_available() {
        targets.push((primary, &primary_keys));
    }
    if let Some(backup) = shared.nodes.next_available(primary) {
        targets.push((backup, &backup_keys));
    }
    for (index, keys) in targets {
        let node = shared.nodes.get(index);
        for key in keys {
            match node.call(|b| b.delete(key)).await {
                Ok(true) => Stats::count(&shared.stats.counters.deletes),
                Ok(false) => {}
                Err(error) if index == primary => outcome = outcome.and(Err(error)),
                Err(_) => {}
            }
        }
    }
    outcome
}

/// Slides the inactivity clock of a session a request carried but did not
/// use (MSM refreshes validity on every request with a session id).
pub(crate) async fn refresh_validity(shared: &Shared, id: &SessionId) {
    let Some(primary) = shared.node_index(id) else {
        return;
    };
    let expiry = validity_expiry(shared.config.max_inactive);
    let node = shared.nodes.get(primary);
    if node.is_available() {
        let key = shared.validity_key(id);
        let _ = node.call(|b| b.touch(&key, expiry)).await;
    }
    if let Some(backup) = shared.nodes.next_available(primary) {
        let key = shared.backup_validity_key(id);
        let _ = shared.nodes.get(backup).call(|b| b.touch(&key, expiry)).await;
    }
}
