//! The tower adapter: [`SessionLayer`] around a service (an axum `Router`,
//! say), and with feature `axum` the [`Session`] extractor.
//!
//! ```text
//! request ──► SessionService: read the id (cookie / header), check requestUriIgnorePattern,
//!               │             put a SessionHandle into the request extensions
//!               └─► inner service ──► Session extractor / SessionHandle::session():
//!                                       find / load / relocate / take over
//!          ◄── SessionService: back up (async queue or sync) or store (non-sticky),
//!              add Set-Cookie, or answer 503 / 504 / 500 when the session's
//!              changes could not be saved
//! ```
//!
//! A request dropped before it finished (client hang-up, timeout) is
//! finished as in warp: its lock is released and its share of a non-sticky
//! session handed on; a sticky session it changed is backed up.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

use crate::error::Error;
use crate::inner::ManagerInner;
use crate::manager::SessionManager;
use crate::request::context::{RequestContext, RequestGuard};
use crate::request::session::Session;
use crate::request::{ErrorReply, finish, open_session, request_context};

/// A tower [`Layer`](tower_layer::Layer) that gives every request of the
/// wrapped service its session: made by [`SessionManager::layer`]. Apply
/// it once, around all routes that use sessions (with axum, routes added
/// after `.layer(…)` are outside it: their `Session` extractor answers
/// `500` naming the layer). `requestUriIgnorePattern` and the locking
/// mode's URI patterns see the path as this service sees it (under an
/// axum `nest`, without the prefix).
///
/// The wrapped service's response body must be buildable from a `String`
/// (axum's `Body` is): the layer answers `503` (with `Retry-After`), `504`
/// or `500` itself when a session's changes could not be saved.
#[derive(Clone)]
pub struct SessionLayer {
    manager: Arc<ManagerInner>,
}

impl std::fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLayer").finish_non_exhaustive()
    }
}

impl SessionManager {
    /// The tower layer for this manager (feature `tower`).
    pub fn layer(&self) -> SessionLayer {
        SessionLayer {
            manager: self.inner.clone(),
        }
    }
}

impl<S> tower_layer::Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> SessionService<S> {
        SessionService {
            inner,
            manager: self.manager.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around its inner service.
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    manager: Arc<ManagerInner>,
}

impl<S> std::fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionService").finish_non_exhaustive()
    }
}

impl<S, RequestBody, ResponseBody> tower_service::Service<Request<RequestBody>> for SessionService<S>
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<ResponseBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RequestBody: Send + 'static,
    ResponseBody: From<String> + Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        // The clone that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let manager = self.manager.clone();
        Box::pin(async move {
            let context = request_context(
                &manager,
                request.method().as_str(),
                request.uri().path(),
                request.headers(),
            );
            let guard = RequestGuard::begin_unfiled(context);
            request.extensions_mut().insert(SessionHandle {
                context: guard.context().clone(),
            });
            let response = inner.call(request).await?;
            Ok(finish(&manager, guard, response).await)
        })
    }
}

/// The request's session, as [`SessionLayer`] leaves it in the request
/// extensions. Outside axum, take it from there and call
/// [`session`](Self::session).
#[derive(Clone)]
pub struct SessionHandle {
    context: Arc<RequestContext>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle").finish_non_exhaustive()
    }
}

impl SessionHandle {
    /// Finds the session the request names: in this process, or in
    /// memcached (takeover, non-sticky load), relocated when its node is
    /// down. A missing, malformed or unknown id gives an empty `Session`.
    /// Errors when memcached cannot answer, when another instance is taking
    /// the session over or its lock cannot be had (all `503`-worthy), and
    /// when called after the request finished (the handle is for the
    /// request only).
    pub async fn session(&self) -> Result<Session, Error> {
        open_session(self.context.clone()).await
    }
}

/// Why the axum [`Session`] extractor failed; its response is `503` with
/// `Retry-After: 1` when the session cannot be had now (memcached does not
/// answer, a takeover or a lock is in the way), `500` naming the missing
/// layer when [`SessionLayer`] is not applied.
#[cfg(feature = "axum")]
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SessionRejection(#[from] pub Error);

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for SessionRejection {
    fn into_response(self) -> axum_core::response::Response {
        ErrorReply::for_error(&self.0).into_response()
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let handle = parts
            .extensions
            .get::<SessionHandle>()
            .cloned()
            .ok_or(SessionRejection(Error::MissingLayer))?;
        handle.session().await.map_err(SessionRejection)
    }
}
