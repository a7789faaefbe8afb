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
use crate::manager::Shared;
use crate::session_id::SessionId;
use crate::session_state::{BackupNeed, SessionState};
use crate::stats::Stats;
use crate::sticky;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum SlotKey {
    Task(tokio::task::Id),
    /// Outside a spawned task (e.g. a `#[tokio::test]` body run by `block_on`).
    Thread(std::thread::ThreadId),
}

impl SlotKey {
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
    pub(crate) fn current(&self) -> Option<Arc<RequestContext>> {
        self.slots.lock().get(&SlotKey::current()).cloned()
    }
}

/// What the client sent as its session id.
#[derive(Debug)]
pub(crate) enum IncomingId {
    None,
    /// Present but malformed, or naming an unknown node.
    Invalid,
    Valid(SessionId),
}

/// Per-request session state.
pub(crate) struct RequestContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) incoming: IncomingId,
    /// The path matched `requestUriIgnorePattern`: no memcached traffic.
    pub(crate) ignored: bool,
    resolved: OnceCell<()>,
    pub(crate) state: Mutex<RequestState>,
}

#[derive(Default)]
pub(crate) struct RequestState {
    /// The session this request works on, once resolved or created.
    pub(crate) session: Option<Arc<SessionState>>,
    /// Sessions invalidated during this request (to delete at its end).
    pub(crate) invalidated: Vec<Arc<SessionState>>,
    /// The handler extracted the session.
    pub(crate) used: bool,
    finished: bool,
}

impl RequestContext {
    pub(crate) fn new(shared: Arc<Shared>, incoming: IncomingId, ignored: bool) -> Self {
        Self {
            shared,
            incoming,
            ignored,
            resolved: OnceCell::new(),
            state: Mutex::new(RequestState::default()),
        }
    }

    /// Finds the session the request names (once per request).
    pub(crate) async fn resolve(self: &Arc<Self>) -> Result<(), Error> {
        self.resolved
            .get_or_try_init(|| async {
                let found = match &self.incoming {
                    IncomingId::Valid(id) => {
                        sticky::resolve(&self.shared, id, self.ignored).await?
                    }
                    IncomingId::None | IncomingId::Invalid => None,
                };
                let mut state = self.state.lock();
                state.used = true;
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
}

/// What the response needs regarding the cookie.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CookieAction {
    None,
    /// Send the (new or changed) id.
    Set(String),
    /// The session was invalidated: expire the cookie.
    Remove,
}

/// Held by the layer for the duration of one request.
pub(crate) struct RequestGuard {
    context: Arc<RequestContext>,
    key: SlotKey,
}

impl RequestGuard {
    /// Registers a request's context for the current task.
    pub(crate) fn begin(context: RequestContext) -> Result<Self, Error> {
        let key = SlotKey::current();
        let context = Arc::new(context);
        let mut slots = context.shared.slots.slots.lock();
        if slots.contains_key(&key) {
            return Err(Error::ConcurrentRequestsInOneTask);
        }
        slots.insert(key, context.clone());
        drop(slots);
        Ok(Self { context, key })
    }

    /// Ends the request: schedules or performs backups and says what the
    /// cookie needs.
    pub(crate) async fn finish(self) -> CookieAction {
        let context = self.context.clone();
        let shared = &context.shared;
        let counters = &shared.stats.counters;
        let (session, invalidated) = {
            let mut state = context.state.lock();
            state.finished = true;
            if state.used || state.session.is_some() {
                Stats::count(&counters.requests_with_session);
            } else {
                Stats::count(&counters.requests_without_session);
            }
            (
                state.session.clone(),
                std::mem::take(&mut state.invalidated),
            )
        };
        let cookie = match &session {
            Some(session) => {
                let mut inner = session.inner.lock();
                inner.announced = true;
                if context.incoming_text() == Some(inner.id.as_str()) {
                    CookieAction::None
                } else {
                    CookieAction::Set(inner.id.to_string())
                }
            }
            None if !invalidated.is_empty() && context.incoming_text().is_some() => {
                CookieAction::Remove
            }
            None => CookieAction::None,
        };
        if context.ignored {
            Stats::count(&counters.requests_ignored);
            return cookie;
        }
        let mut to_sync = invalidated;
        if let Some(session) = session {
            let need = {
                let inner = session.inner.lock();
                inner.backup_need(
                    shared
                        .node_index(&inner.id)
                        .map(|i| shared.nodes.get(i).epoch()),
                )
            };
            if need == BackupNeed::Nothing {
                Stats::count(&counters.backups_skipped);
            } else {
                to_sync.push(session);
            }
        }
        if !to_sync.is_empty() {
            if shared.config.backup_async {
                for session in &to_sync {
                    shared.schedule_backup(session);
                }
            } else {
                shared.backup_now(to_sync).await;
            }
        }
        cookie
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let shared = &self.context.shared;
        {
            let mut slots = shared.slots.slots.lock();
            if slots
                .get(&self.key)
                .is_some_and(|c| Arc::ptr_eq(c, &self.context))
            {
                slots.remove(&self.key);
            }
        }
        let mut state = self.context.state.lock();
        if state.finished {
            return;
        }
        // Rejected or cancelled: keep memcached in step with what the
        // handler changed; a session created here was never announced to
        // the client, so nobody can reach it: drop it.
        for session in state.invalidated.drain(..) {
            shared.schedule_backup(&session);
        }
        if let Some(session) = state.session.take() {
            let (announced, id) = {
                let inner = session.inner.lock();
                (inner.announced, inner.id.clone())
            };
            if announced {
                shared.schedule_backup(&session);
            } else {
                shared.sessions.remove(id.as_str());
            }
        }
    }
}
