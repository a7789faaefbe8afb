//! Sticky mode: finding the session a request names, relocating it when its
//! node is gone, and taking it over when another instance held it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::events::SessionEventKind;
use crate::session::id::SessionId;
use crate::session::state::{SessionState, StoredMark};
use crate::stats::Stats;
use crate::sticky::Sticky;
use crate::sticky::relocate::relocate_if_needed;
use crate::store::backend::Expiry;

/// How long a takeover claim blocks other instances from taking over the
/// same session.
const TAKEOVER_CLAIM_TTL: Duration = Duration::from_secs(30);

/// The session named by `id`, held here or loaded from memcached.
/// `local_only`: ignored requests never touch memcached.
pub(crate) async fn resolve(
    sticky: &Arc<Sticky>,
    id: &SessionId,
    local_only: bool,
) -> Result<Option<Arc<SessionState>>, Error> {
    if let Some(session) = find_local(sticky, id) {
        if !local_only {
            relocate_if_needed(sticky, &session);
        }
        return Ok(Some(session));
    }
    if local_only {
        return Ok(None);
    }
    take_over(sticky, id).await
}

/// A live session held here under `id` (or a forward of it); expired ones
/// are expired on the spot.
fn find_local(sticky: &Arc<Sticky>, id: &SessionId) -> Option<Arc<SessionState>> {
    let session = sticky.sessions.get(id.as_str())?;
    let now = Instant::now();
    let mut inner = session.inner.lock();
    if inner.is_ended() {
        return None;
    }
    if inner.is_expired(now) {
        drop(inner);
        sticky.expire(&session);
        return None;
    }
    inner.touch_access(now);
    inner.mark_announced();
    drop(inner);
    Some(session)
}

/// Loads a session this instance does not hold. When the id names another
/// route (another instance held it), the session is claimed, given this
/// instance's route, stored under the new id and its old key deleted; a
/// concurrent takeover of the same id by another instance makes this one
/// fail with [`Error::TakeoverInProgress`]. Within this process, concurrent
/// requests for the same id wait for one takeover and share its result.
async fn take_over(sticky: &Arc<Sticky>, id: &SessionId) -> Result<Option<Arc<SessionState>>, Error> {
    let Some(index) = sticky.store.nodes.node_of(id) else {
        Stats::count(&sticky.stats.counters.unknown_session_ids);
        return Ok(None);
    };
    let node = sticky.store.nodes.get(index);
    if !node.is_available() {
        tracing::info!(node = %node.label(), "session's node is down and the session is not held here; it is lost");
        Stats::count(&sticky.stats.counters.unknown_session_ids);
        return Ok(None);
    }
    let _one_at_a_time = sticky.id_gates.enter(id.as_str()).await;
    match find_local(sticky, id) {
        Some(found) => Ok(Some(found)),
        // Ended here (logout, expiry, cycled id) while its memcached copy
        // may not be gone yet: it never comes back.
        None if sticky.sessions.has_ended(id.as_str()) => {
            Stats::count(&sticky.stats.counters.unknown_session_ids);
            Ok(None)
        }
        None => load_and_claim(sticky, id, index).await,
    }
}

/// Whether the takeover claim `claim` names this instance's route: a
/// claim left by an earlier takeover of ours (this process's takeovers of
/// one id run one at a time), which must not make us wait on ourselves —
/// e.g. a session taken over a1 → a2 → a1 and then back by a2.
async fn claimed_by_us(sticky: &Sticky, index: usize, claim: &str) -> bool {
    let Some(route) = sticky.config.route() else {
        return false;
    };
    let Ok(Some(value)) = sticky.store.nodes.get(index).call(|b| b.get(claim)).await else {
        return false;
    };
    std::str::from_utf8(&value)
        .ok()
        .and_then(|id| id.rsplit_once('.'))
        .is_some_and(|(_, claimed_for)| claimed_for == route)
}

/// Whether a sticky copy with `remaining` TTL is of a session idle for
/// longer than its interval: its TTL was set to the session's remaining
/// inactivity time plus [`ttl_margin`](crate::session::state::ttl_margin)
/// when it was last written or touched.
fn idle_past_its_interval(record: &crate::store::envelope::SessionRecord, remaining: Option<Duration>) -> bool {
    let (Some(remaining), true) = (remaining, record.max_inactive_secs > 0) else {
        return false;
    };
    let margin = crate::session::state::ttl_margin(Duration::from_secs(record.max_inactive_secs));
    // A read touches the copy only once its lead fell below half the
    // margin, so the TTL may lag the last access by up to that much: only
    // less than half the margin left is surely idle past the interval.
    remaining.saturating_add(Duration::from_secs(1)) < margin / 2
}

/// A takeover claim to release unless the takeover succeeded.
struct ClaimGuard {
    sticky: Arc<Sticky>,
    index: usize,
    /// The claim's key and CAS token, while it is to be released.
    key: Option<(String, u64)>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some((key, cas)) = self.key.take() else {
            return;
        };
        let sticky = Arc::clone(&self.sticky);
        let index = self.index;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = sticky.store.nodes.get(index).call(|b| b.delete_if_cas(&key, cas)).await;
            });
        }
    }
}

async fn load_and_claim(
    sticky: &Arc<Sticky>,
    id: &SessionId,
    index: usize,
) -> Result<Option<Arc<SessionState>>, Error> {
    let node = sticky.store.nodes.get(index);
    let counters = &sticky.stats.counters;
    let foreign = id.route() != sticky.config.route();
    let new_id = if foreign {
        id.with_location(id.node(), sticky.config.route())
    } else {
        id.clone()
    };
    let claim = foreign.then(|| sticky.store.keys.takeover(id));
    // Released if this takeover fails or is cancelled from here on (a
    // dropped request, an error): a claim left behind would block every
    // other instance's takeover of the session for 30 s.
    let mut claim_guard = ClaimGuard {
        sticky: Arc::clone(sticky),
        index,
        key: None,
    };
    if let Some(claim) = &claim {
        let claimed = node
            .call(|b| b.add_with_cas(claim, new_id.as_str().as_bytes(), Expiry::After(TAKEOVER_CLAIM_TTL)))
            .await
            .inspect_err(|_| Stats::count(&counters.load_failures))?;
        // Released only if it is still this claim (CAS): never one renewed
        // or added by a later takeover.
        claim_guard.key = claimed.map(|cas| (claim.clone(), cas));
        let claimed = claimed.is_some();
        if !claimed && !claimed_by_us(sticky, index, claim).await {
            Stats::count(&counters.takeover_conflicts);
            tracing::warn!(node = %node.label(), "another instance is taking this session over");
            return Err(Error::TakeoverInProgress);
        }
        if !claimed {
            // Our own older claim: renew it for this takeover, so it does
            // not expire while this one runs.
            let _ = node
                .call(|b| b.set(claim, new_id.as_str().as_bytes(), Expiry::After(TAKEOVER_CLAIM_TTL)))
                .await;
        }
    }
    let key = sticky.store.keys.session(id);
    let started = Instant::now();
    let loaded = node
        .call(|b| b.get_with_ttl(&key))
        .await
        .inspect_err(|_| Stats::count(&counters.load_failures))?;
    sticky.stats.load_time.record_duration(started.elapsed());
    // Nothing to take over: release the claim, or every later request with
    // this id (e.g. a garbage or expired cookie) would get 503 until it expires.
    let release_claim = || async {
        if let Some(claim) = &claim {
            let _ = node.call(|b| b.delete(claim)).await;
        }
    };
    let Some((bytes, remaining)) = loaded else {
        Stats::count(&counters.load_misses);
        Stats::count(&counters.unknown_session_ids);
        release_claim().await;
        claim_guard.key = None;
        return Ok(None);
    };
    let Some(record) = sticky.store.read_record(&key, &bytes, index) else {
        release_claim().await;
        claim_guard.key = None;
        return Ok(None);
    };
    if idle_past_its_interval(&record, remaining) {
        // Its holder died (or lost it) after the session went idle for
        // longer than its interval: expired, whoever loads it.
        Stats::count(&counters.sessions_expired);
        Stats::count(&counters.unknown_session_ids);
        release_claim().await;
        claim_guard.key = None;
        return Ok(None);
    }
    Stats::count(&counters.loads);
    // A copy under our own route is already in memcached: only its TTL is
    // unknown, so mark it as expiring now and the request's end touches it.
    let stored = (!foreign).then(|| StoredMark {
        id: id.clone(),
        version: 0,
        epoch: node.epoch(),
        expires_at: Some(Instant::now()),
    });
    let session = Arc::new(SessionState::from_record(new_id.clone(), record, stored));
    {
        let mut inner = session.inner.lock();
        inner.mark_announced();
        // What was loaded counts as answered: an answer handing out
        // another id (takeover, relocation, cycle_id) waits for a copy
        // under it.
        inner.loaded_as_answered(id.clone());
        if foreign {
            inner.mark_obsolete(id.clone());
        }
    }
    // Taken over: the claim stays until it expires, so no other instance
    // takes the old id over meanwhile.
    claim_guard.key = None;
    // Ended here while it was being loaded (a logout racing this request):
    // it stays ended.
    if !sticky.sessions.insert_unless_ended(id.as_str(), session.clone()) {
        Stats::count(&counters.unknown_session_ids);
        return Ok(None);
    }
    if foreign {
        // Filed under the new id, with the old one forwarding to it.
        sticky.sessions.rekey(id.as_str(), new_id.as_str(), true);
        Stats::count(&counters.takeovers);
        tracing::info!(
            from = id.route().unwrap_or("none"),
            to = sticky.config.route().unwrap_or("none"),
            node = %node.label(),
            "took over a session from another instance"
        );
    }
    relocate_if_needed(sticky, &session);
    if foreign {
        sticky.listeners.notify(SessionEventKind::TakenOver, &session);
    }
    Ok(Some(session))
}
