//! One request's view of its session, from the layer's start to the
//! response, and the registry that lets the `session()` filter find it.
//!
//! warp filters cannot pass data to an enclosing filter, nor write request
//! extensions, so the layer files each request's context under the tokio
//! task that runs it (hyper runs each request of a connection, and each
//! HTTP/2 stream, on its own task, one at a time). The entry is removed
//! when the request finishes, is rejected or is cancelled. Two requests
//! running concurrently inside one task (e.g. `tokio::join!` over two
//! `warp::test` requests) are detected and refused with a clear error.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::error::Error;
use crate::inner::{ManagerInner, Mode};
use crate::non_sticky::NonSticky;
use crate::non_sticky::claims::{self, Claim};
use crate::non_sticky::write::refresh_validity;
use crate::request::id_transport::{IdAction, IncomingId};
use crate::session::state::{BackupNeed, SessionState};
use crate::stats::Stats;
use crate::sticky;
use crate::sticky::Sticky;

/// Filed only by the warp adapter (tower passes the context in the
/// request's extensions).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(not(feature = "warp"), allow(dead_code))]
enum SlotKey {
    Task(tokio::task::Id),
    /// Outside a spawned task (e.g. a `#[tokio::test]` body run by `block_on`).
    Thread(std::thread::ThreadId),
}

impl SlotKey {
    #[cfg(feature = "warp")]
    fn current() -> Self {
        match tokio::task::try_id() {
            Some(id) => Self::Task(id),
            None => Self::Thread(std::thread::current().id()),
        }
    }
}

/// The contexts of the requests in flight, by task.
#[derive(Default)]
pub(crate) struct RequestSlots {
    slots: Mutex<HashMap<SlotKey, Arc<RequestContext>>>,
}

impl RequestSlots {
    /// The context of the request running in the current task.
    #[cfg(feature = "warp")]
    pub(crate) fn current(&self) -> Option<Arc<RequestContext>> {
        self.slots.lock().get(&SlotKey::current()).cloned()
    }
}

/// Per-request session state.
pub(crate) struct RequestContext {
    pub(crate) manager: Arc<ManagerInner>,
    pub(crate) incoming: IncomingId,
    /// The path matched `requestUriIgnorePattern`: no memcached traffic.
    pub(crate) ignored: bool,
    /// Method and path (without query), for `lockingMode`; kept only in
    /// non-sticky mode, the only one that locks.
    method: Box<str>,
    path: Box<str>,
    resolved: OnceCell<()>,
    pub(crate) state: Mutex<RequestState>,
    /// The handler changed, invalidated or re-keyed the session (set by
    /// the [`Session`](crate::Session) methods).
    pub(crate) changed: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
pub(crate) struct RequestState {
    /// The session this request works on, once resolved or created.
    pub(crate) session: Option<Arc<SessionState>>,
    /// Sessions invalidated during this request (to delete at its end).
    pub(crate) invalidated: Vec<Arc<SessionState>>,
    /// Non-sticky: this request's share of the session it loaded.
    claim: Option<Claim>,
    pub(crate) finished: bool,
}

impl RequestContext {
    pub(crate) fn new(
        manager: Arc<ManagerInner>,
        incoming: IncomingId,
        ignored: bool,
        method: &str,
        path: &str,
    ) -> Self {
        let (method, path) = match manager.mode {
            Mode::NonSticky(_) => (method.into(), path.into()),
            Mode::Sticky(_) => (Box::default(), Box::default()),
        };
        Self {
            manager,
            incoming,
            ignored,
            method,
            path,
            resolved: OnceCell::new(),
            state: Mutex::new(RequestState::default()),
            changed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Finds the session the request names (once per request).
    pub(crate) async fn resolve(self: &Arc<Self>) -> Result<(), Error> {
        // A handle kept past the end of its request (moved into a
        // background task, say) must not take a share or a lock that
        // nobody would release: the session is only for the request.
        if self.state.lock().finished {
            return Err(Error::RequestFinished);
        }
        self.resolved
            .get_or_try_init(|| async {
                let (found, claim) = match (&self.incoming, &self.manager.mode) {
                    (IncomingId::Valid(id), Mode::Sticky(sticky)) => {
                        (sticky::resolve::resolve(sticky, id, self.ignored).await?, None)
                    }
                    // Non-sticky sessions live in memcached: ignored requests see none.
                    (IncomingId::Valid(_), Mode::NonSticky(_)) if self.ignored => (None, None),
                    (IncomingId::Valid(id), Mode::NonSticky(non_sticky)) => {
                        let wants_lock = non_sticky.lock_policy.should_lock(
                            &non_sticky.config.locking_mode,
                            &self.method,
                            &self.path,
                        );
                        let claim = claims::resolve(non_sticky, id, wants_lock).await?;
                        (claim.as_ref().map(|c| c.session().clone()), claim)
                    }
                    (IncomingId::None | IncomingId::Invalid, _) => (None, None),
                };
                let mut state = self.state.lock();
                if state.finished {
                    // The request ended while its session was being found
                    // (a kept handle): what was taken is let go at once
                    // (the claim's drop counts it out, releasing its lock).
                    drop(state);
                    drop(claim);
                    return Err(Error::RequestFinished);
                }
                state.claim = claim;
                if state.session.is_none() {
                    state.session = found;
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// The id the client sent, as text, when it was valid.
    fn incoming_text(&self) -> Option<&str> {
        match &self.incoming {
            IncomingId::Valid(id) => Some(id.as_str()),
            _ => None,
        }
    }

    /// Non-sticky end of request: releases this request's claim (the last
    /// user writes), writes a session created here, and slides the TTLs of
    /// the copies of a session id that was carried but not used.
    async fn finish_non_sticky(
        &self,
        non_sticky: &Arc<NonSticky>,
        claim: Option<Claim>,
        session: Option<&Arc<SessionState>>,
    ) -> Result<(), Error> {
        let claimed = claim.as_ref().map(|c| c.session().clone());
        let released = match claim {
            Some(claim) => {
                let changed = self.changed.load(std::sync::atomic::Ordering::Relaxed);
                claims::release(non_sticky, claim, &self.method, &self.path, changed).await
            }
            None => Ok(()),
        };
        if let Some(session) = session.filter(|_| !self.ignored) {
            let is_claimed = claimed.as_ref().is_some_and(|c| Arc::ptr_eq(c, session));
            if !is_claimed {
                claims::store_new(non_sticky, session).await?;
            }
        }
        if claimed.is_none() && self.resolved.get().is_none() && !self.ignored {
            if let IncomingId::Valid(id) = &self.incoming {
                refresh_validity(non_sticky, id).await;
            }
        }
        released
    }
}

/// Held by the layer for the duration of one request.
pub(crate) struct RequestGuard {
    context: Arc<RequestContext>,
    /// Where the context is filed for the `session()` filter (warp); `None`
    /// when the adapter hands it over itself (tower: request extensions).
    filed: Option<(Arc<RequestSlots>, SlotKey)>,
}

impl RequestGuard {
    /// Registers a request's context for the current task.
    #[cfg(feature = "warp")]
    pub(crate) fn begin(slots: &Arc<RequestSlots>, context: RequestContext) -> Result<Self, Error> {
        let key = SlotKey::current();
        let context = Arc::new(context);
        let mut filed = slots.slots.lock();
        if filed.contains_key(&key) {
            return Err(Error::ConcurrentRequestsInOneTask);
        }
        filed.insert(key, context.clone());
        drop(filed);
        Ok(Self {
            context,
            filed: Some((Arc::clone(slots), key)),
        })
    }

    /// Starts a request whose context the adapter passes on itself.
    #[cfg(feature = "tower")]
    pub(crate) fn begin_unfiled(context: RequestContext) -> Self {
        Self {
            context: Arc::new(context),
            filed: None,
        }
    }

    /// The request's context.
    #[cfg(feature = "tower")]
    pub(crate) fn context(&self) -> &Arc<RequestContext> {
        &self.context
    }

    /// Ends the request: backs the session up (sticky) or stores it
    /// (non-sticky), and says what the cookie needs. An error means the
    /// request's session changes were not saved (non-sticky lock lost).
    pub(crate) async fn finish(self) -> Result<IdAction, Error> {
        let context = self.context.clone();
        let manager = &context.manager;
        let counters = &manager.stats.counters;
        let (session, invalidated, claim) = {
            let mut state = context.state.lock();
            state.finished = true;
            if state.session.is_some() || !state.invalidated.is_empty() {
                Stats::count(&counters.requests_with_session);
            } else {
                Stats::count(&counters.requests_without_session);
            }
            (
                state.session.clone(),
                std::mem::take(&mut state.invalidated),
                state.claim.take(),
            )
        };
        if context.ignored {
            Stats::count(&counters.requests_ignored);
        }
        let any_invalidated = !invalidated.is_empty();
        match &manager.mode {
            Mode::Sticky(sticky) => {
                if !context.ignored {
                    let changed = context.changed.load(std::sync::atomic::Ordering::Relaxed);
                    back_up_sticky(sticky, session.as_ref(), invalidated, changed).await;
                }
            }
            Mode::NonSticky(non_sticky) => {
                context.finish_non_sticky(non_sticky, claim, session.as_ref()).await?;
                if context.ignored {
                    // Non-sticky ignored requests never touch memcached, so a
                    // session created by one is not stored: do not announce it.
                    return Ok(IdAction::None);
                }
            }
        }
        Ok(cookie_action(&context, session.as_ref(), any_invalidated))
    }
}

/// Sticky mode: queue (async) or perform (sync) the backups this request needs.
async fn back_up_sticky(
    sticky: &Arc<Sticky>,
    session: Option<&Arc<SessionState>>,
    invalidated: Vec<Arc<SessionState>>,
    changed: bool,
) {
    // Ended sessions are tombstoned before the response, also with async
    // backup: once a logout is answered, no other instance may take the
    // old id over from a copy still in memcached.
    if !invalidated.is_empty() {
        sticky.backups.backup_to_completion(invalidated).await;
    }
    let Some(session) = session else {
        return;
    };
    let need = {
        let mut inner = session.inner.lock();
        let epoch = sticky.store.nodes.node_for(inner.id()).map(|node| node.epoch());
        let need = inner.backup_need(epoch);
        if need != BackupNeed::Write {
            // Stored as it is (or no node to store it on): answered as is.
            inner.acknowledge();
        }
        need
    };
    if need == BackupNeed::Nothing {
        Stats::count(&sticky.stats.counters.backups_skipped);
        return;
    }
    if sticky.config.backup_async {
        sticky.schedule_backup(session);
        if need == BackupNeed::Write {
            // Something new (a change, a new id): answered once what was
            // answered before it is stored under the id it carries.
            sticky.backups.acknowledge_change(session, changed).await;
        }
    } else {
        sticky.backups.backup_to_completion(vec![session.clone()]).await;
    }
}

/// `Set-Cookie` when the id is new or changed; removal after an invalidation
/// that left no session.
fn cookie_action(context: &RequestContext, session: Option<&Arc<SessionState>>, any_invalidated: bool) -> IdAction {
    match session {
        Some(session) => {
            session.mark_announced();
            let inner = session.inner.lock();
            if context.incoming_text() == Some(inner.id().as_str()) {
                let persistent = context.manager.config.cookie.persistent;
                // Only a persistent cookie is re-sent for an unchanged id.
                if persistent {
                    IdAction::Keep(inner.id().to_string(), inner.max_inactive())
                } else {
                    IdAction::None
                }
            } else {
                IdAction::Set(inner.id().to_string(), inner.max_inactive())
            }
        }
        None if any_invalidated && context.incoming_text().is_some() => IdAction::Remove,
        None => IdAction::None,
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some((slots, key)) = &self.filed {
            let mut filed = slots.slots.lock();
            if filed.get(key).is_some_and(|c| Arc::ptr_eq(c, &self.context)) {
                filed.remove(key);
            }
        }
        let mut state = self.context.state.lock();
        if state.finished {
            return;
        }
        // Rejected or cancelled: a handle kept past this point (moved into
        // a task) can no longer open the session.
        state.finished = true;
        let sticky = match &self.context.manager.mode {
            Mode::Sticky(sticky) => sticky,
            Mode::NonSticky(non_sticky) => {
                // Finish in the background: the last user writes and unlocks. A
                // session created here was never announced: nothing to store.
                let claim = state.claim.take();
                drop(state);
                let context = self.context.clone();
                let non_sticky = Arc::clone(non_sticky);
                // Outside a runtime (it is shutting down) nothing can run; the
                // claim's own drop and the lock's TTL clean up.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        if let Err(error) = context.finish_non_sticky(&non_sticky, claim, None).await {
                            tracing::warn!(%error, "finishing an abandoned request");
                        }
                    });
                }
                return;
            }
        };
        // Keep memcached in step with what the handler changed; a session
        // created here was never announced to the client, so nobody can
        // reach it: drop it.
        for session in state.invalidated.drain(..) {
            sticky.schedule_backup(&session);
        }
        if let Some(session) = state.session.take() {
            let (announced, id) = {
                let inner = session.inner.lock();
                (inner.is_announced(), inner.id().clone())
            };
            if announced {
                sticky.schedule_backup(&session);
            } else {
                sticky.sessions.remove(id.as_str());
            }
        }
    }
}
