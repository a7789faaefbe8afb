//! Lifecycle hooks (MSM users have Tomcat's `HttpSessionListener`): the
//! app registers a listener with
//! [`SessionManager::on_session_event`](crate::SessionManager::on_session_event)
//! and learns when a session is created, invalidated, expired or taken
//! over from another instance, with read access to its attributes.
//!
//! Listeners run synchronously on the thread that made the change, after
//! the change, with no lock of this crate held; keep them short (hand
//! slow work to a task). A listener that panics is logged and otherwise
//! ignored: it cannot stop the expiry sweep or a request.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::session::attributes::decode_value;
use crate::session::state::SessionState;

/// What happened to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEventKind {
    /// A request created it (its first `insert`).
    Created,
    /// The application ended it ([`Session::invalidate`](crate::Session::invalidate)).
    Invalidated,
    /// It expired from inactivity. Sticky mode only: a non-sticky session
    /// expires in memcached (its TTL), where no instance sees it go.
    Expired,
    /// Sticky mode: this instance took it over from another one (whose
    /// route its id named), after that instance died or the load balancer
    /// moved the user.
    TakenOver,
}

/// A session's lifecycle event, as a listener sees it.
pub struct SessionEvent<'a> {
    kind: SessionEventKind,
    session: &'a SessionState,
}

impl fmt::Debug for SessionEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionEvent")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl SessionEvent<'_> {
    /// What happened.
    pub fn kind(&self) -> SessionEventKind {
        self.kind
    }

    /// The session's id (after the event: a session taken over has its new
    /// id, with this instance's route).
    pub fn id(&self) -> String {
        self.session.id().to_string()
    }

    /// Reads an attribute, as [`Session::get`](crate::Session::get) does
    /// (an ended session still shows what it held when it ended).
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let inner = self.session.inner.lock();
        inner
            .attributes()
            .get(key)
            .map(|bytes| decode_value(key, bytes))
            .transpose()
    }
}

type Listener = Arc<dyn Fn(&SessionEvent<'_>) + Send + Sync>;

/// The listeners of one manager.
#[derive(Default)]
pub(crate) struct Listeners {
    list: RwLock<Vec<Listener>>,
}

impl Listeners {
    pub(crate) fn add(&self, listener: Listener) {
        self.list.write().push(listener);
    }

    /// Tells every listener; call it with no lock held.
    pub(crate) fn notify(&self, kind: SessionEventKind, session: &SessionState) {
        let listeners = self.list.read().clone();
        if listeners.is_empty() {
            return;
        }
        let event = SessionEvent { kind, session };
        for listener in listeners {
            if catch_unwind(AssertUnwindSafe(|| listener(&event))).is_err() {
                tracing::error!(?kind, "a session listener panicked; the session went on");
            }
        }
    }
}
