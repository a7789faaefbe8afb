//! [`Session`]: the handle a handler receives.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cluster::SessionLocation;
use crate::error::Error;
use crate::events::SessionEventKind;
use crate::inner::Mode;
use crate::request::context::RequestContext;
use crate::session::attributes::{decode_value, encode_value};
use crate::session::id::SessionId;
use crate::session::state::{SessionInner, SessionState};

/// The current request's session: cheap to clone, `Send + Sync`.
///
/// Accessors are synchronous: the session was found (or not) before the
/// handler ran. A request without a session gets one on its first
/// [`insert`](Self::insert); reads never create one. Values are stored
/// serialized (postcard), so [`get`](Self::get) returns a copy, and
/// changing a value means inserting it again. Types must be postcard
/// compatible (no `serde_json::Value`, untagged enums or flatten).
///
/// Changes are written to memcached at the end of the request, only when
/// something changed (see the crate docs). The handle is for its request:
/// once the request finished (answered, or dropped), reads still show the
/// session as it was, but [`insert`](Self::insert), [`update`](Self::update)
/// and [`remove`](Self::remove) fail with [`Error::RequestFinished`] and the
/// other changes do nothing — nothing would store them.
#[derive(Clone)]
pub struct Session {
    context: Arc<RequestContext>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.session_id())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(context: Arc<RequestContext>) -> Self {
        Self { context }
    }

    fn current(&self) -> Option<Arc<SessionState>> {
        self.context.state.lock().session.clone()
    }

    /// The session to change, created when there is none; an error once
    /// the request finished.
    fn current_or_create(&self) -> Result<Arc<SessionState>, Error> {
        let manager = &self.context.manager;
        let created = {
            let mut state = self.context.state.lock();
            if state.finished {
                return Err(Error::RequestFinished);
            }
            if let Some(session) = &state.session {
                return Ok(session.clone());
            }
            let session = manager.create_session();
            state.session = Some(session.clone());
            session
        };
        manager.listeners.notify(SessionEventKind::Created, &created);
        Ok(created)
    }

    /// The session to change; `None` when there is none or the request
    /// finished.
    fn current_to_change(&self) -> Option<Arc<SessionState>> {
        let state = self.context.state.lock();
        if state.finished {
            return None;
        }
        state.session.clone()
    }

    /// The session id, or `None` while the request has no session.
    pub fn id(&self) -> Option<String> {
        self.session_id().map(|id| id.to_string())
    }

    /// Where this session's copies are (see [`SessionLocation`]); `None`
    /// without a session.
    pub fn location(&self) -> Option<SessionLocation> {
        let id = self.session_id()?;
        let manager = &self.context.manager;
        let sticky = matches!(manager.mode, Mode::Sticky(_));
        Some(crate::cluster::locate(&manager.store.nodes, &id, sticky))
    }

    fn session_id(&self) -> Option<SessionId> {
        self.current().map(|s| s.id())
    }

    /// Whether the request has a session (an existing one or one created
    /// by this request).
    pub fn exists(&self) -> bool {
        self.current().is_some()
    }

    /// Reads an attribute; `Ok(None)` when it (or the session) is absent,
    /// `Err` when the stored value is not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let Some(session) = self.current() else {
            return Ok(None);
        };
        let inner = session.inner.lock();
        inner
            .attributes()
            .get(key)
            .map(|bytes| decode_value(key, bytes))
            .transpose()
    }

    /// Stores an attribute, creating the session if there is none. Storing
    /// a value equal to the current one is not a change.
    pub fn insert<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        let bytes = encode_value(key, value)?;
        let session = self.current_or_create()?;
        let mut inner = session.inner.lock();
        self.check_size(&inner, key, &bytes)?;
        let before = inner.version();
        inner.set_attribute(key, bytes);
        self.note_change(inner.version() != before);
        Ok(())
    }

    /// Reads, changes and stores an attribute atomically with respect to
    /// the other requests of this session on this instance (a plain `get`
    /// followed by `insert` can interleave with a concurrent request).
    /// Creates the session if there is none. Returns the stored value.
    ///
    /// ```no_run
    /// # fn f(session: memcached_sessions::Session) -> Result<(), memcached_sessions::Error> {
    /// let hits: u64 = session.update("hits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    /// # Ok(()) }
    /// ```
    pub fn update<T, F>(&self, key: &str, change: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Option<T>) -> T,
    {
        let session = self.current_or_create()?;
        let mut inner = session.inner.lock();
        let current = inner
            .attributes()
            .get(key)
            .map(|bytes| decode_value(key, bytes))
            .transpose()?;
        let next = change(current);
        let bytes = encode_value(key, &next)?;
        self.check_size(&inner, key, &bytes)?;
        let before = inner.version();
        inner.set_attribute(key, bytes);
        self.note_change(inner.version() != before);
        Ok(next)
    }

    /// Gives the session an inactivity interval of its own, for example a
    /// long one on login with "remember me": `Some(interval)` (whole
    /// seconds, at least one) or `None` (never expires). Creates the
    /// session if there is none. The interval travels with the session: it
    /// sets its expiry in this process and in memcached, and survives a
    /// takeover by another instance, a relocation to another node and a
    /// restart; a persistent cookie's `Max-Age` follows it. Sticky mode
    /// only ([`Error::PerSessionIntervalNeedsStickyMode`] otherwise).
    pub fn set_max_inactive_interval(&self, interval: Option<std::time::Duration>) -> Result<(), Error> {
        if self.context.manager.sticky().is_none() {
            return Err(Error::PerSessionIntervalNeedsStickyMode);
        }
        // Rounded up to whole seconds, as memcached's TTLs and the stored record count.
        let interval = interval.map(|d| {
            let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
            std::time::Duration::from_secs(secs.max(1))
        });
        let session = self.current_or_create()?;
        let mut inner = session.inner.lock();
        let before = inner.version();
        inner.set_max_inactive(interval);
        self.note_change(inner.version() != before);
        Ok(())
    }

    /// Removes an attribute and returns its value; `Ok(None)` when absent.
    /// On a type mismatch the attribute is still removed and `Err` returned.
    pub fn remove<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        if self.context.state.lock().finished {
            return Err(Error::RequestFinished);
        }
        let Some(bytes) = self.remove_raw(key) else {
            return Ok(None);
        };
        postcard::from_bytes(&bytes).map(Some).map_err(|source| Error::Decode {
            key: key.to_owned(),
            source,
        })
    }

    /// Removes an attribute without reading it; `true` when it was there.
    pub fn delete(&self, key: &str) -> bool {
        self.remove_raw(key).is_some()
    }

    fn remove_raw(&self, key: &str) -> Option<Box<[u8]>> {
        let removed = self.current_to_change()?.inner.lock().remove_attribute(key);
        self.note_change(removed.is_some());
        removed
    }

    /// Records that this request changed its session (non-sticky mode
    /// writes, before answering, what a request changed).
    fn note_change(&self, changed: bool) {
        if changed {
            self.context.changed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// `maxSessionSize`: refuses a value that would make the session too large.
    fn check_size(&self, inner: &SessionInner, key: &str, bytes: &[u8]) -> Result<(), Error> {
        let limit = self.context.manager.config.max_session_size;
        let size = inner.size_with(key, bytes);
        if size > limit {
            return Err(Error::SessionTooLarge {
                key: key.to_owned(),
                size,
                limit,
            });
        }
        Ok(())
    }

    /// Removes every attribute (the session and its id stay).
    pub fn clear(&self) {
        if let Some(session) = self.current_to_change() {
            let mut inner = session.inner.lock();
            self.note_change(!inner.attributes().is_empty());
            inner.clear_attributes();
        }
    }

    /// Whether the session has no attributes (or there is no session).
    pub fn is_empty(&self) -> bool {
        self.current().is_none_or(|s| s.inner.lock().attributes().is_empty())
    }

    /// The attribute names, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.current()
            .map(|s| s.inner.lock().attributes().keys().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Ends the session (logout): removed from this process now and from
    /// memcached at the end of the request; the response expires the
    /// cookie. A later [`insert`](Self::insert) in the same request starts
    /// a new session with a new id.
    pub fn invalidate(&self) {
        let manager = &self.context.manager;
        let (session, ended) = {
            let mut state = self.context.state.lock();
            if state.finished {
                return;
            }
            let Some(session) = state.session.take() else {
                return;
            };
            self.note_change(true);
            let ended = manager.invalidate(&session);
            state.invalidated.push(session.clone());
            (session, ended)
        };
        if ended {
            manager.listeners.notify(SessionEventKind::Invalidated, &session);
        }
    }

    /// Gives the session a new id, keeping its data (call it on login to
    /// prevent session fixation). The old id stops working at once, here
    /// and, once the backup is written, in memcached. Returns the new id,
    /// or `None` when there is no session.
    pub fn cycle_id(&self) -> Option<String> {
        let session = self.current_to_change()?;
        let new = self.context.manager.cycle_id(&session);
        self.note_change(true);
        Some(new.to_string())
    }
}
