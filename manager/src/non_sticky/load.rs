//! Loading a session: the lock's round trip, the primary copy, and the
//! backup when the primary is down or lost it (re-creation, relocation).

use std::sync::Arc;

use tokio::time::Instant;

use crate::config::locking_mode::LockFailure;
use crate::error::Error;
use crate::non_sticky::NonSticky;
use crate::non_sticky::in_flight::{LoadInfo, key_tag};
use crate::non_sticky::lock::HeldLock;
use crate::non_sticky::ttl::{copy_lifetime, forward_expiry, primary_expiry};
use crate::session::id::SessionId;
use crate::session::state::{SessionState, StoredMark};
use crate::stats::Stats;
use crate::store::backend::{Versioned, WriteMode};
use crate::store::envelope::{self, Format, SessionRecord, Stored};
use crate::store::nodes::NodeIndex;

/// Takes the lock of `id`'s session, applying `lockFailure` when it cannot.
/// When the lock lives on the session's own node, the session is read in
/// the same round trip, under the lock: that read comes back too.
pub(crate) async fn lock_for(
    non_sticky: &Arc<NonSticky>,
    id: &SessionId,
) -> Result<(Option<HeldLock>, Option<PrimaryRead>), Error> {
    let Some(primary) = non_sticky.store.nodes.node_of(id) else {
        return Ok((None, None));
    };
    let mut outcome = Ok(None);
    // A node found dead while locking is marked down: lock on the next
    // (where the session is about to be relocated).
    for _ in 0..non_sticky.store.nodes.len() {
        let Some(home) = non_sticky.store.nodes.home_of(primary) else {
            return Ok((None, None));
        };
        let read = (home == primary).then(|| {
            (
                non_sticky.store.keys.session(id),
                primary_expiry(non_sticky.config.max_inactive),
            )
        });
        outcome = crate::non_sticky::lock::acquire(&non_sticky.locks, home, non_sticky.store.keys.lock(id), read).await;
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
pub(crate) struct PrimaryRead(Option<Versioned>);

/// A session read from memcached under `stored_as`, given the id `id`
/// (different when relocated: the old keys then become obsolete).
pub(crate) fn loaded(
    stored_as: &SessionId,
    id: SessionId,
    record: SessionRecord,
    load: LoadInfo,
) -> (SessionState, LoadInfo) {
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
        inner.mark_announced();
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
        // Non-sticky decoding never yields documents.
        Some(Stored::Document(_)) | None => Found::Nothing,
    }
}

/// Loads a session from its primary node, or from a backup node when the
/// primary is down or lost it. `first_read`: the primary copy, already
/// read in the lock's round trip.
pub(crate) async fn load(
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
            Ok(_) if non_sticky.store.nodes.added_within(copy_lifetime(max_inactive)) => {
                // Not on its node, and nodes were added lately: the ring
                // changed, so its backup may sit where the ring put it
                // before — search every node (below).
                unanswered = non_sticky.store.unavailable(primary);
            }
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
    // Only the first node after the primary in the ring that is not
    // retired (where the backup is written while it is up) answering "not
    // here" settles it.
    let designated_backup = non_sticky.store.nodes.designated_backup(primary);
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
    let nodes = &non_sticky.store.nodes;
    // While a node was added lately, the record may sit where the ring put
    // the backup before: every live node is asked.
    let candidates: Vec<NodeIndex> = if nodes.added_within(copy_lifetime(non_sticky.config.max_inactive)) {
        nodes
            .ring_after(primary)
            .filter(|&i| nodes.get(i).is_available())
            .collect()
    } else {
        nodes.next_available(primary).into_iter().collect()
    };
    let mut record = None;
    for backup in candidates {
        match read_backup(non_sticky, id, backup).await {
            Ok(Found::Moved(to)) => {
                let marker = envelope::encode_moved(to.as_str());
                record = Some((Loaded::Moved(to), marker));
                break;
            }
            Ok(Found::Gone) => {
                record = Some((Loaded::Missing, envelope::encode_gone()));
                break;
            }
            // A live backup copy: the primary is not superseded (a record
            // further along the ring is older than this copy).
            Ok(Found::Session(..)) => break,
            _ => {}
        }
    }
    let (verdict, marker) = record?;
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
