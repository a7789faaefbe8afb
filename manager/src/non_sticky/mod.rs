//! Non-sticky mode: every request that uses a session loads it from
//! memcached and writes it back at its end if it changed; no instance owns
//! a session, so a load balancer may send any request anywhere.
//!
//! Keys of a session with id `I` (prefix `P`), storage format 2 (envelope
//! variant `V2`; the earlier format's records are never read):
//!
//! | key | node | TTL | what |
//! |---|---|---|---|
//! | `P I` | primary (named in `I`) | maxInactive, slid by every read | the session: its TTL *is* the inactivity clock |
//! | `bak:P I` | next available node in the ring | 1¼ × maxInactive from its last write | the backup copy |
//! | `lock:P <random part of I>` | primary (or where it moves) | lockExpiration | the lock |
//!
//! Operations per request kind (R = round trip):
//!
//! * **read-only** (session used, not changed): `mg P I v c T<maxInactive>`
//!   on the primary — **1 operation, 1 R**: it reads the session with its
//!   CAS token and slides its TTL. Once a quarter of the interval has
//!   passed since the session was last written, a read also rewrites it
//!   (primary, CAS-conditional, then backup), which keeps the backup's TTL
//!   ahead of the primary's: 3 operations, 3 R, once per quarter interval.
//!   So does the first read after any node went down, came back or
//!   restarted empty (as this instance saw it) of a session written
//!   before: its backup may be missing or on a node that is no longer the
//!   next available one.
//! * **modifying**: the read, then the primary written *conditionally on
//!   the CAS token it was read with* (`ms … C<cas>`; an `add` for a new or
//!   relocated id), then — only once the primary kept it — the backup:
//!   3 operations, 3 R. The backup is not written in parallel with the
//!   primary on purpose: a write refused as stale, or whose outcome is
//!   unknown, must never reach the copy a failover would read.
//! * **with a lock**: the lock's `add` goes in the same pipelined round
//!   trip as the read (`ms lock … ME` then `mg`, in order on one
//!   connection, so the read happens under the lock), and its CAS-guarded
//!   delete in the same round trip as the backup write: 5 operations,
//!   still 3 R.
//! * **request carrying the id without using the session**: `touch` of
//!   both copies, before the response = 2 operations, 1 R.
//! * **logout** (`invalidate`) and the old id of a `cycle_id`: tombstones
//!   written over the primary and every backup slot round the ring, and
//!   the backup slots' tombstones again a few `operationTimeout`s later (a
//!   concurrent backup write may still be on its way); what cannot be
//!   written now is queued as a repair ([`crate::store::repairs`]).
//! * With a **single node** there is no backup: read-only 1, modifying 2.
//!
//! **Expiry.** A session expires when its primary copy's TTL runs out.
//! The backup outlives the primary by at most a quarter interval, so a
//! session read from its backup (primary down or restarted empty) may be
//! at most `maxInactive / 4` past its inactivity limit — the documented
//! margin; never more.
//!
//! **Failover.** A primary that lost the session (restarted empty) is
//! re-created from the backup. When the primary node is down, the backup
//! is read from the next available node in the ring (walking further if
//! that one is down too), the id is relocated to that node, new primary
//! and backup copies are written, and the old backup copy is replaced by a
//! **forward record** (`Moved` → the new id, same TTL as the backup it
//! replaces), so requests still carrying the old id — in flight, or whose
//! response was lost — find the session under its new id instead of
//! starting an empty one. A new id given by `cycle_id` leaves tombstones
//! instead: the old id must die. The old primary copy, on a node that may
//! come back with it (frozen, partitioned), gets its forward record as a
//! repair when the node answers; and any instance that saw a node change
//! state checks the backup slot of a copy written before that change
//! (one more operation, once per session per change), so a stale copy is
//! recognised by the forward or tombstone there even before that repair.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::Instant;

use self::lock::{HeldLock, Locks};
use self::lock_policy::LockPolicy;
use crate::config::Config;
use crate::config::locking_mode::LockFailure;
use crate::detached::run_detached;
use crate::error::Error;
use crate::id_gates::IdGates;
use crate::session::id::SessionId;
use crate::session::state::{SessionState, StoredMark, unix_ms};
use crate::stats::Stats;
use crate::store::Store;
use crate::store::backend::Versioned;
use crate::store::backend::{Expiry, WriteMode, WriteOutcome};
use crate::store::envelope::{self, Format, SessionRecord, Stored};
use crate::store::nodes::NodeIndex;

pub(crate) mod lock;
pub(crate) mod lock_policy;

/// Non-sticky mode's state: the sessions this instance's requests are
/// using right now, and which requests lock.
pub(crate) struct NonSticky {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<Store>,
    pub(crate) stats: Arc<Stats>,
    /// Sessions in use by this instance's requests.
    pub(crate) inflight: InFlightSessions,
    /// Which requests lock (`lockingMode`, learnt with `auto`).
    pub(crate) lock_policy: LockPolicy,
    /// Serializes, per session id, the loads and write-backs of this process.
    pub(crate) id_gates: IdGates,
    /// Where locks are taken, renewed and released.
    pub(crate) locks: Arc<Locks>,
}

impl NonSticky {
    pub(crate) fn new(config: Arc<Config>, store: Arc<Store>, stats: Arc<Stats>, instance_token: String) -> Self {
        let locks = Locks::new(
            Arc::clone(&store),
            config.lock_expiration,
            config.operation_timeout,
            instance_token,
        );
        Self {
            config,
            store,
            stats,
            inflight: InFlightSessions::default(),
            lock_policy: LockPolicy::default(),
            id_gates: IdGates::default(),
            locks: Arc::new(locks),
        }
    }
}

/// What a load found out about a session's copies.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LoadInfo {
    /// Created by this request: nothing stored yet.
    new: bool,
    /// The primary copy must be (re-)written: lost by its node, or relocated.
    primary_missing: bool,
    /// The session was last written before a node went down, came back or
    /// restarted empty: its backup may be missing or on the wrong node.
    backup_stale: bool,
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
    /// Writes of the non_sticky copy made (or perhaps made: unconfirmed) by
    /// users that finished before the last one.
    writes: u64,
    /// A write of the non_sticky copy was refused (another request changed the
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
    non_sticky: Arc<NonSticky>,
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
    fn new(non_sticky: &Arc<NonSticky>, key: &SessionId, session: Arc<SessionState>, writes_at_join: u64) -> Claim {
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

/// TTL of the primary copy: the inactivity interval itself.
fn primary_expiry(max_inactive: Option<Duration>) -> Expiry {
    max_inactive.map_or(Expiry::Never, Expiry::After)
}

/// TTL of the backup copy (and of a forward record): a quarter interval
/// longer than the primary's, since reads slide only the primary and an
/// unchanged session is rewritten once a quarter interval has passed.
fn backup_expiry(max_inactive: Option<Duration>) -> Expiry {
    max_inactive.map_or(Expiry::Never, |max| Expiry::After(backup_lifetime(max)))
}

/// 1¼ × `max` (saturating: any configured interval is accepted).
fn backup_lifetime(max: Duration) -> Duration {
    max.saturating_add(max / 4)
}

/// TTL of a forward record: as long as the backup it replaces would have
/// lived (a day when sessions never expire).
fn forward_expiry(max_inactive: Option<Duration>) -> Expiry {
    Expiry::After(max_inactive.map_or(FORWARD_WITHOUT_EXPIRY, backup_lifetime))
}

/// How long a forward record lives when sessions never expire.
const FORWARD_WITHOUT_EXPIRY: Duration = Duration::from_secs(86_400);

/// Whether an unchanged session written at `written_ms` is due for its
/// rewrite (which refreshes the backup's TTL).
fn rewrite_due(max_inactive: Option<Duration>, written_ms: u64, now_ms: u64) -> bool {
    max_inactive
        .is_some_and(|max| now_ms.saturating_sub(written_ms) >= u64::try_from(max.as_millis() / 4).unwrap_or(u64::MAX))
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
        let gone = inner.invalidated || !id.as_str().starts_with(inner.id.random_part());
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
                lock::release(lock).await;
            }
            other.map(|_| None)
        }
    }
}

/// Takes the lock of `id`'s session, applying `lockFailure` when it cannot.
/// When the lock lives on the session's own node, the session is read in
/// the same round trip, under the lock: that read comes back too.
async fn lock_for(
    non_sticky: &Arc<NonSticky>,
    id: &SessionId,
) -> Result<(Option<HeldLock>, Option<PrimaryRead>), Error> {
    let Some(primary) = non_sticky.store.nodes.node_of(id) else {
        return Ok((None, None));
    };
    let mut outcome = Ok(None);
    // A node found dead while locking is marked down: lock on the next
    // (where the session is about to be relocated).
    for _ in 0..non_sticky.store.nodes.iter().count() {
        let Some(home) = non_sticky.store.nodes.home_of(primary) else {
            return Ok((None, None));
        };
        let read = (home == primary).then(|| {
            (
                non_sticky.store.keys.session(id),
                primary_expiry(non_sticky.config.max_inactive),
            )
        });
        outcome = lock::acquire(&non_sticky.locks, home, non_sticky.store.keys.lock(id), read).await;
        if !matches!(&outcome, Err(error) if error.is_unavailable()) {
            break;
        }
    }
    match (outcome, non_sticky.config.lock_failure) {
        (Ok(Some((lock, read))), _) => Ok((Some(lock), read.map(PrimaryRead))),
        (Ok(None), LockFailure::Fail) => Err(Error::LockUnavailable),
        (Err(error), LockFailure::Fail) => Err(error),
        (failed, LockFailure::Proceed) => {
            let reason = failed.err().map_or_else(|| "timed out".to_owned(), |e| e.to_string());
            tracing::warn!(%reason, "session lock not acquired; proceeding without it (lockFailure=proceed)");
            Ok((None, None))
        }
    }
}

/// The session's primary copy as read (with its TTL slid) in the lock's
/// round trip.
struct PrimaryRead(Option<Versioned>);

/// A session read from memcached under `stored_as`, given the id `id`
/// (different when relocated: the old keys then become obsolete).
fn loaded(stored_as: &SessionId, id: SessionId, record: SessionRecord, load: LoadInfo) -> (SessionState, LoadInfo) {
    let load = LoadInfo {
        written_ms: record.last_accessed_ms,
        ..load
    };
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
        // Marked as stored under its old id, so relocation makes those
        // keys obsolete (a no-op when the id did not change).
        inner.mark_obsolete(stored_as.clone());
    }
    (session, load)
}

/// What a copy read from memcached holds.
enum Found {
    Session(SessionRecord, Option<u64>),
    /// A forward record: the session was relocated to this id.
    Moved(SessionId),
    /// A tombstone: logged out.
    Gone,
    Nothing,
}

/// Interprets a copy of `id` read from `key` on `node`: anything not a
/// session or forward record of this format is "nothing".
fn interpret(non_sticky: &NonSticky, key: &str, read: Option<Versioned>, node: NodeIndex) -> Found {
    let Some(read) = read else {
        return Found::Nothing;
    };
    match non_sticky.store.read_stored(key, &read.value, node, Format::NonSticky) {
        Some(Stored::Session(record)) => Found::Session(record, Some(read.cas)),
        Some(Stored::Gone) => Found::Gone,
        Some(Stored::Moved(to)) => match SessionId::parse(&to, |node| non_sticky.store.nodes.is_known(node)) {
            Some(to) => Found::Moved(to),
            None => Found::Nothing,
        },
        None => Found::Nothing,
    }
}

/// Loads a session from its primary node, or from a backup node when the
/// primary is down or lost it. `first_read`: the primary copy, already
/// read in the lock's round trip.
async fn load(
    non_sticky: &Arc<NonSticky>,
    id: &SessionId,
    first_read: Option<PrimaryRead>,
) -> Result<Option<(SessionState, LoadInfo)>, Error> {
    match load_once(non_sticky, id, first_read).await? {
        Loaded::Session(found) => Ok(Some(*found)),
        Loaded::Missing => Ok(None),
        // Relocated by another request: one hop to where it lives now (a
        // forward found there again is not followed: no loops).
        Loaded::Moved(to) => {
            Stats::count(&non_sticky.stats.counters.forwards_followed);
            match load_once(non_sticky, &to, None).await? {
                Loaded::Session(found) => Ok(Some(*found)),
                Loaded::Missing | Loaded::Moved(_) => {
                    Stats::count(&non_sticky.stats.counters.unknown_session_ids);
                    Ok(None)
                }
            }
        }
    }
}

/// What one load found.
enum Loaded {
    Session(Box<(SessionState, LoadInfo)>),
    Moved(SessionId),
    Missing,
}

async fn load_once(
    non_sticky: &Arc<NonSticky>,
    id: &SessionId,
    first_read: Option<PrimaryRead>,
) -> Result<Loaded, Error> {
    let counters = &non_sticky.stats.counters;
    let Some(primary) = non_sticky.store.nodes.node_of(id) else {
        Stats::count(&counters.unknown_session_ids);
        return Ok(Loaded::Missing);
    };
    let max_inactive = non_sticky.config.max_inactive;
    let started = Instant::now();
    // Why the session could not be read where it may be; when neither its
    // node nor its backup's node answered (down, frozen), the session may
    // well exist, and "no session" would be a lie: 503 instead.
    let unanswered: Error;
    if non_sticky.store.nodes.get(primary).is_available() {
        let node = non_sticky.store.nodes.get(primary);
        let data_key = non_sticky.store.keys.session(id);
        let read = match first_read {
            Some(PrimaryRead(read)) => Ok(read),
            None => {
                node.call(|b| b.get_and_touch(&data_key, primary_expiry(max_inactive)))
                    .await
            }
        };
        non_sticky.stats.load_time.record_duration(started.elapsed());
        match read {
            Ok(read) if read.is_some() => match interpret(non_sticky, &data_key, read, primary) {
                Found::Session(record, cas) => {
                    let backup_stale = record.last_accessed_ms <= non_sticky.store.nodes.last_change_ms();
                    if backup_stale {
                        // Written before a node went down or came back: this
                        // copy may be one its node kept while the session
                        // was relocated or logged out elsewhere. The backup
                        // slot tells (a forward record or nothing there).
                        if let Some(verdict) = superseded(non_sticky, id, primary, &data_key, cas).await {
                            return Ok(verdict);
                        }
                    }
                    Stats::count(&counters.loads);
                    let load = LoadInfo {
                        cas: cas.map(|cas| (key_tag(&data_key), cas)),
                        backup_stale,
                        ..LoadInfo::default()
                    };
                    return Ok(Loaded::Session(Box::new(loaded(id, id.clone(), record, load))));
                }
                Found::Moved(to) => return Ok(Loaded::Moved(to)),
                // Logged out, or garbage (counted and logged by the decoder).
                Found::Gone | Found::Nothing => {
                    Stats::count(&counters.unknown_session_ids);
                    return Ok(Loaded::Missing);
                }
            },
            Ok(_) => {
                // Not on its node: expired, never existed, or its node
                // restarted empty — the backup tells (it outlives the
                // primary by at most a quarter interval: the margin).
                let Some(backup) = non_sticky.store.nodes.next_available(primary) else {
                    Stats::count(&counters.load_misses);
                    Stats::count(&counters.unknown_session_ids);
                    return Ok(Loaded::Missing);
                };
                return match read_backup(non_sticky, id, backup).await {
                    Ok(Found::Session(record, _)) => {
                        Stats::count(&counters.backup_node_loads);
                        Stats::count(&counters.loads);
                        let load = LoadInfo {
                            primary_missing: true,
                            ..LoadInfo::default()
                        };
                        Ok(Loaded::Session(Box::new(loaded(id, id.clone(), record, load))))
                    }
                    Ok(Found::Moved(to)) => Ok(Loaded::Moved(to)),
                    Ok(Found::Gone | Found::Nothing) => {
                        Stats::count(&counters.load_misses);
                        Stats::count(&counters.unknown_session_ids);
                        Ok(Loaded::Missing)
                    }
                    Err(error) => {
                        // Not on its node and its backup's node did not
                        // answer: it may exist there.
                        Stats::count(&counters.load_failures);
                        Err(error)
                    }
                };
            }
            Err(error) => {
                if !error.is_unavailable() {
                    Stats::count(&counters.load_failures);
                    return Err(error);
                }
                // The primary just failed: fall through to the backups.
                unanswered = error;
            }
        }
    } else {
        unanswered = non_sticky.store.unavailable(primary);
    }
    // Only the node after the primary in the ring (where the backup is
    // written while it is up) answering "not here" settles it.
    let designated_backup = non_sticky.store.nodes.ring_after(primary).next();
    let mut answered = false;
    for candidate in non_sticky.store.nodes.ring_after(primary) {
        if !non_sticky.store.nodes.get(candidate).is_available() {
            continue;
        }
        match read_backup(non_sticky, id, candidate).await {
            Ok(Found::Session(record, _)) => {
                let relocated = id.with_location(
                    non_sticky.store.nodes.get(candidate).spec.id.as_ref(),
                    non_sticky.config.route(),
                );
                Stats::count(&counters.backup_node_loads);
                Stats::count(&counters.loads);
                Stats::count(&counters.relocations);
                tracing::info!(
                    from = %non_sticky.store.nodes.get(primary).label(),
                    to = %non_sticky.store.nodes.get(candidate).label(),
                    "primary node down; session read from its backup and relocated"
                );
                let load = LoadInfo {
                    primary_missing: true,
                    ..LoadInfo::default()
                };
                return Ok(Loaded::Session(Box::new(loaded(id, relocated, record, load))));
            }
            Ok(Found::Moved(to)) => return Ok(Loaded::Moved(to)),
            Ok(Found::Gone) => {
                Stats::count(&counters.unknown_session_ids);
                return Ok(Loaded::Missing);
            }
            Ok(Found::Nothing) => {
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
    Ok(Loaded::Missing)
}

/// Whether the primary copy of `id` (read with token `cas`) was
/// superseded while its node was away: the backup slot holds a forward
/// record (relocated: follow it) or a tombstone (logged out). The stale
/// copy is then replaced (CAS-guarded) by what the backup slot says, so
/// it converges without waiting for the relocating instance's repair.
/// `None`: the copy stands (also when the backup's node does not answer).
async fn superseded(
    non_sticky: &NonSticky,
    id: &SessionId,
    primary: NodeIndex,
    data_key: &str,
    cas: Option<u64>,
) -> Option<Loaded> {
    let backup = non_sticky.store.nodes.next_available(primary)?;
    let (verdict, marker) = match read_backup(non_sticky, id, backup).await {
        Ok(Found::Moved(to)) => {
            let marker = envelope::encode_moved(to.as_str());
            (Loaded::Moved(to), marker)
        }
        Ok(Found::Gone) => (Loaded::Missing, envelope::encode_gone()),
        _ => return None,
    };
    if let Some(cas) = cas {
        let expiry = forward_expiry(non_sticky.config.max_inactive);
        let _ = non_sticky
            .store
            .write_copy(primary, data_key.to_owned(), &marker, expiry, WriteMode::IfCas(cas))
            .await;
    }
    tracing::info!("a stale primary copy was superseded by its backup slot's record");
    Some(verdict)
}

/// Reads the backup copy of `id` on `node` (one `mg`, TTL not slid: the
/// session is about to be rewritten).
async fn read_backup(non_sticky: &NonSticky, id: &SessionId, node: NodeIndex) -> Result<Found, Error> {
    let key = non_sticky.store.keys.backup(id);
    let read = non_sticky.store.nodes.get(node).call(|b| b.get_with_cas(&key)).await?;
    Ok(interpret(non_sticky, &key, read, node))
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
            let version = session.inner.lock().version;
            let written = store(non_sticky, &session, load, None).await;
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
        return store(non_sticky, &entry.session, entry.load, entry.lock)
            .await
            .map(drop);
    };
    if let Some(lock) = entry.lock {
        lock::release(lock).await;
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
    run_to_completion(async move { store(&non_sticky, &session, load, None).await.map(drop) }).await
}

/// Brings memcached in line with the session: delete it (invalidated),
/// write both copies (changed, new, relocated, primary lost, or due for its
/// periodic rewrite), or nothing (read-only). Releases `lock`, if given,
/// once the primary was written (in the backup's round trip), or at the
/// end when it was not.
///
/// `Err` when the change is not durable: no node to write to, the primary
/// refused it (stale: [`Error::Conflict`]), or the primary write failed.
async fn store(
    non_sticky: &Arc<NonSticky>,
    session: &SessionState,
    load: LoadInfo,
    lock: Option<HeldLock>,
) -> Result<Option<(u64, u64)>, Error> {
    let mut lock = lock;
    let mut outcome = write_session(non_sticky, session, load, &mut lock).await;
    if outcome
        .as_ref()
        .is_err_and(|error| primary_lost_under_write(non_sticky, session, error))
        && relocate_now(non_sticky, session)
    {
        // The write died with its node (killed, or frozen past
        // operationTimeout): whatever may have landed there is either gone
        // with the node or superseded by the forward records the
        // relocation leaves. Written where the session moves instead —
        // with an `add`, so a concurrent relocation from the older backup
        // wins or loses as a whole (a loser answers 503, nothing saved).
        let relocated = LoadInfo {
            cas: None,
            primary_missing: true,
            ..load
        };
        outcome = write_session(non_sticky, session, relocated, &mut lock).await;
    }
    if let Some(lock) = lock {
        lock::release(lock).await;
    }
    outcome
}

/// Whether `error` is a primary write of a changed session that failed
/// because its node went away (it is marked unavailable now).
fn primary_lost_under_write(non_sticky: &NonSticky, session: &SessionState, error: &Error) -> bool {
    let node_failed = match error {
        Error::Backend { source, .. } | Error::OutcomeUnknown { source, .. } => source.is_unavailable(),
        _ => false,
    };
    let inner = session.inner.lock();
    node_failed
        && !inner.invalidated
        && non_sticky
            .store
            .nodes
            .node_of(&inner.id)
            .is_some_and(|primary| !non_sticky.store.nodes.get(primary).is_available())
}

/// Gives the session an id located on the next available node (its old
/// id becomes obsolete: forward records are left for it). `false` when no
/// node is available.
fn relocate_now(non_sticky: &NonSticky, session: &SessionState) -> bool {
    let mut inner = session.inner.lock();
    let old = inner.id.clone();
    let Some(candidate) = non_sticky
        .store
        .nodes
        .node_of(&old)
        .and_then(|primary| non_sticky.store.nodes.next_available(primary))
    else {
        return false;
    };
    inner.id = old.with_location(
        non_sticky.store.nodes.get(candidate).spec.id.as_ref(),
        non_sticky.config.route(),
    );
    inner.mark_obsolete(old);
    Stats::count(&non_sticky.stats.counters.relocations);
    tracing::info!(
        to = %non_sticky.store.nodes.get(candidate).label(),
        "primary node failed under a write; the session is written where it moves"
    );
    true
}

async fn write_session(
    non_sticky: &Arc<NonSticky>,
    session: &SessionState,
    load: LoadInfo,
    lock: &mut Option<HeldLock>,
) -> Result<Option<(u64, u64)>, Error> {
    let counters = &non_sticky.stats.counters;
    let max_inactive = non_sticky.config.max_inactive;
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
            let deleted = delete_session_keys(non_sticky, old).await;
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
    let relocated = !obsolete.is_empty();
    let rewrite = changed
        || load.new
        || load.primary_missing
        || load.backup_stale
        || relocated
        || rewrite_due(max_inactive, load.written_ms, now_ms);
    if !rewrite {
        Stats::count(&counters.backups_skipped);
        return Ok(None);
    }
    if (load.primary_missing && !relocated) || (load.backup_stale && !changed) {
        Stats::count(&counters.backups_recreated);
    }
    let Some(primary) = non_sticky.store.nodes.node_of(&id) else {
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
        let bytes = envelope::encode(inner.record(), Format::NonSticky);
        non_sticky.stats.serialization_time.record_duration(started.elapsed());
        bytes
    };
    non_sticky.stats.session_size.record(bytes.len() as u64);
    let data_key = non_sticky.store.keys.session(&id);
    // Never over a newer copy: conditional on the token it was read with.
    let primary_mode = match load.cas {
        Some((tag, cas)) if tag == key_tag(&data_key) => WriteMode::IfCas(cas),
        _ => WriteMode::Add,
    };
    let started = Instant::now();
    // The primary first, conditionally; the backup only once the primary
    // kept this write, so a refused or unconfirmed write never reaches the
    // backup (where a later failover would find it).
    let primary_written = non_sticky
        .store
        .write_copy(
            primary,
            data_key.clone(),
            &bytes,
            primary_expiry(max_inactive),
            primary_mode,
        )
        .await;
    let outcome = match primary_written {
        Ok(WriteOutcome::Refused) if !changed && !load.new => {
            // A rewrite or relocation of an unchanged session that another
            // request already changed or moved: nothing of this one is lost.
            Ok(None)
        }
        Ok(WriteOutcome::Refused) => {
            // Another request changed the session since it was read:
            // nothing of this one is kept.
            Stats::count(&counters.write_conflicts);
            Err(Error::Conflict)
        }
        Ok(WriteOutcome::Stored(cas)) => {
            let backup_written = async {
                match non_sticky.store.nodes.next_available(primary) {
                    None => Ok(WriteOutcome::Stored(0)),
                    Some(backup) => {
                        let key = non_sticky.store.keys.backup(&id);
                        non_sticky
                            .store
                            .write_copy(backup, key, &bytes, backup_expiry(max_inactive), WriteMode::Set)
                            .await
                    }
                }
            };
            // The lock goes in the same round trip as the backup.
            let release = async {
                if let Some(held) = lock.take() {
                    lock::release(held).await;
                }
            };
            let (backup_written, ()) = tokio::join!(backup_written, release);
            match backup_written {
                Ok(_) => Stats::count(&counters.backups_written),
                Err(error) => {
                    Stats::count(&counters.backups_failed);
                    tracing::warn!(%error, "writing a non-sticky backup copy failed; the primary copy is written");
                }
            }
            Ok(Some((key_tag(&data_key), cas)))
        }
        Err(error) if !changed && !load.new && !relocated => {
            // Only a refresh failed: the session itself is as it was.
            tracing::warn!(%error, "refreshing a non-sticky session failed");
            Ok(None)
        }
        Err(error) => {
            Stats::count(&counters.backups_failed);
            tracing::error!(%error, "a non-sticky session could not be saved");
            // A write that may have landed is a 504, never a 503.
            Err(outcome_unknown(error))
        }
    };
    non_sticky.stats.backup_time.record_duration(started.elapsed());
    if outcome.as_ref().is_ok_and(Option::is_some) {
        for old in obsolete.iter().filter(|old| **old != id) {
            // Best effort: the session moved on to `id`.
            if old.random_part() == id.random_part() {
                leave_forward(non_sticky, old, &id).await;
            } else {
                let _ = delete_session_keys(non_sticky, old).await;
            }
        }
    }
    outcome
}

/// Replaces the copies of a relocated session's old id `old` that can be
/// reached with forward records to `to`, so requests still carrying `old`
/// find it.
/// The old primary copy, on a node that is down or unreachable from here,
/// gets its forward record as soon as the node answers (a repair), so it
/// can never serve a stale copy to a request carrying the old id.
async fn leave_forward(non_sticky: &NonSticky, old: &SessionId, to: &SessionId) {
    let Some(old_primary) = non_sticky.store.nodes.node_of(old) else {
        return;
    };
    let forward = envelope::encode_moved(to.as_str());
    let expiry = forward_expiry(non_sticky.config.max_inactive);
    let primary_key = non_sticky.store.keys.session(old);
    let old_backup = non_sticky.store.nodes.next_available(old_primary);
    let (primary_written, backup_written) = tokio::join!(
        non_sticky
            .store
            .write_or_repair(old_primary, primary_key, &forward, expiry, repair_deadline(non_sticky)),
        async {
            match old_backup {
                Some(node) => {
                    let key = non_sticky.store.keys.backup(old);
                    non_sticky
                        .store
                        .write_or_repair(node, key, &forward, expiry, repair_deadline(non_sticky))
                        .await
                }
                None => Ok(()),
            }
        }
    );
    if let Err(error) = primary_written.and(backup_written) {
        tracing::info!(%error, "a forward record is left for the repair queue");
    }
}

/// Until when a repair matters: as long as the copy it targets could live.
fn repair_deadline(non_sticky: &NonSticky) -> Instant {
    let lifetime = match forward_expiry(non_sticky.config.max_inactive) {
        Expiry::After(lifetime) => lifetime,
        Expiry::Never => FORWARD_WITHOUT_EXPIRY,
    };
    let now = Instant::now();
    // Beyond the clock's range: as long as a forward without expiry.
    now.checked_add(lifetime.saturating_add(Duration::from_secs(1)))
        .unwrap_or(now + FORWARD_WITHOUT_EXPIRY)
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

/// Ends the stored life of `id`: its primary copy and every backup slot
/// round the ring are replaced by tombstones (living as long as a backup
/// could), and the backup slots again a few `operationTimeout`s later (a
/// concurrent request's backup write may still be on its way). What
/// cannot be done now — a node down, a failed write — is queued as a
/// repair and done as soon as the node answers, so no copy left on a node
/// that comes back can revive the session, and a stale primary coming
/// back is recognised by the tombstone in its backup slot. `Err` when the
/// primary's tombstone may not be there yet: its node is down, or the
/// write failed.
pub(crate) async fn delete_session_keys(non_sticky: &NonSticky, id: &SessionId) -> Result<(), Error> {
    let Some(primary) = non_sticky.store.nodes.node_of(id) else {
        return Ok(());
    };
    let primary_delete = async {
        let key = non_sticky.store.keys.session(id);
        let expiry = forward_expiry(non_sticky.config.max_inactive);
        non_sticky
            .store
            .write_or_repair(
                primary,
                key,
                &envelope::encode_gone(),
                expiry,
                repair_deadline(non_sticky),
            )
            .await?;
        Stats::count(&non_sticky.stats.counters.deletes);
        Ok(())
    };
    let backup_delete = async {
        let key = non_sticky.store.keys.backup(id);
        let gone = envelope::encode_gone();
        let expiry = forward_expiry(non_sticky.config.max_inactive);
        // A backup write of a concurrent request may still be on its way:
        // write the tombstone again once that has surely landed or failed.
        let deadline = repair_deadline(non_sticky);
        let again = Instant::now()
            .checked_add(non_sticky.config.operation_timeout.saturating_mul(3))
            .unwrap_or(deadline);
        let sealed = non_sticky.store.codec.seal(&key, &gone).into_owned();
        // Every node a backup may be on (an earlier outage may have put one
        // further round the ring); those down now are repaired when back.
        for node in non_sticky.store.nodes.ring_after(primary) {
            if non_sticky
                .store
                .write_or_repair(node, key.clone(), &gone, expiry, deadline)
                .await
                .is_ok()
            {
                Stats::count(&non_sticky.stats.counters.deletes);
            }
            non_sticky.store.remember_repair_from(
                node,
                key.clone(),
                crate::store::repairs::Action::Set(sealed.clone(), expiry),
                again,
                deadline,
            );
        }
    };
    let (outcome, ()) = tokio::join!(primary_delete, backup_delete);
    outcome
}

/// Slides the inactivity clock of a session a request carried but did not
/// use (MSM refreshes validity on every request with a session id), and
/// its backup's TTL with it.
pub(crate) async fn refresh_validity(non_sticky: &NonSticky, id: &SessionId) {
    let Some(primary) = non_sticky.store.nodes.node_of(id) else {
        return;
    };
    let max_inactive = non_sticky.config.max_inactive;
    let primary_touch = async {
        let node = non_sticky.store.nodes.get(primary);
        if node.is_available() {
            let key = non_sticky.store.keys.session(id);
            let _ = node.call(|b| b.touch(&key, primary_expiry(max_inactive))).await;
        }
    };
    let backup_touch = async {
        if let Some(backup) = non_sticky.store.nodes.next_available(primary) {
            let key = non_sticky.store.keys.backup(id);
            let _ = non_sticky
                .store
                .nodes
                .get(backup)
                .call(|b| b.touch(&key, backup_expiry(max_inactive)))
                .await;
        }
    };
    tokio::join!(primary_touch, backup_touch);
}
