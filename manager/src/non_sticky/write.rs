//! Writing a session back: the primary (CAS-conditional), then the
//! backup; relocation forwards; sliding the TTLs of an unused session.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use crate::error::Error;
use crate::non_sticky::NonSticky;
use crate::non_sticky::in_flight::{LoadInfo, key_tag};
use crate::non_sticky::lock::HeldLock;
use crate::non_sticky::tombstones::tombstone_session;
use crate::non_sticky::ttl::{backup_expiry, forward_expiry, primary_expiry, repair_deadline, rewrite_due};
use crate::session::id::SessionId;
use crate::session::state::{SessionState, unix_ms};
use crate::stats::Stats;
use crate::store::backend::{WriteMode, WriteOutcome};
use crate::store::envelope::{self, Format};

/// Brings memcached in line with the session: delete it (invalidated),
/// write both copies (changed, new, relocated, primary lost, or due for its
/// periodic rewrite), or nothing (read-only). Releases `lock`, if given,
/// once the primary was written (in the backup's round trip), or at the
/// end when it was not.
///
/// `Err` when the change is not durable: no node to write to, the primary
/// refused it (stale: [`Error::Conflict`]), or the primary write failed.
pub(crate) async fn write_back(
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
        crate::non_sticky::lock::release(lock).await;
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
        && !inner.is_ended()
        && non_sticky
            .store
            .nodes
            .node_of(inner.id())
            .is_some_and(|primary| !non_sticky.store.nodes.get(primary).is_available())
}

/// Gives the session an id located on the next available node (its old
/// id becomes obsolete: forward records are left for it). `false` when no
/// node is available.
fn relocate_now(non_sticky: &NonSticky, session: &SessionState) -> bool {
    let mut inner = session.inner.lock();
    let old = inner.id().clone();
    let Some(candidate) = non_sticky
        .store
        .nodes
        .node_of(&old)
        .and_then(|primary| non_sticky.store.nodes.next_available(primary))
    else {
        return false;
    };
    inner.relocate(old.with_location(
        non_sticky.store.nodes.get(candidate).spec.id.as_ref(),
        non_sticky.config.route(),
    ));
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
        let changed = inner.version() != load.version_written;
        (
            inner.id().clone(),
            inner.is_ended(),
            changed,
            inner.obsolete_ids().to_vec(),
        )
    };
    if invalidated {
        // A logout is acknowledged only once the session's copies are
        // gone; otherwise it could come back with its node (504: retry).
        let mut outcome = Ok(());
        for old in obsolete.iter().chain(std::iter::once(&id)) {
            let deleted = tombstone_session(non_sticky, old).await;
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
        inner.record_access_at(now_ms);
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
                    crate::non_sticky::lock::release(held).await;
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
                let _ = tombstone_session(non_sticky, old).await;
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

/// A failed write that may still have been carried out is reported as
/// such (`504`), never as "nothing saved" (`503`).
fn outcome_unknown(error: Error) -> Error {
    match error {
        Error::Backend { node, source } if source.may_have_been_applied() => Error::OutcomeUnknown { node, source },
        other => other,
    }
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
