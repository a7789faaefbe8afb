//! The warp integration: [`SessionManager::wrap`] around the routes and
//! [`SessionManager::session`] inside them.
//!
//! ```text
//! request ──► wrap: read the cookie, check requestUriIgnorePattern
//!               └─► routes ──► session(): find / load / relocate / take over
//!                                 └─► handler uses Session
//!          ◄── wrap: back up (async queue or sync), add Set-Cookie
//! ```

use warp::filters::path::FullPath;
use warp::http::{HeaderMap, Method};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::error::Error;
use crate::manager::SessionManager;
use crate::request::context::RequestGuard;
use crate::request::session::Session;
use crate::request::{ErrorReply, finish, open_session, request_context};

/// A session error travelling as a warp rejection; turned into a response
/// by [`SessionManager::wrap`], so applications never see it.
struct SessionRejection(Error);

/// Shows the message, so warp's default "unhandled rejection" response
/// (when `session()` is used outside `wrap`) says how to fix it.
impl std::fmt::Debug for SessionRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionRejection({})", self.0)
    }
}

impl warp::reject::Reject for SessionRejection {}

fn reject(error: Error) -> Rejection {
    warp::reject::custom(SessionRejection(error))
}

impl SessionRejection {
    fn to_response(&self) -> Response {
        ErrorReply::for_error(&self.0).into_response()
    }
}

impl SessionManager {
    /// A filter extracting the request's [`Session`].
    ///
    /// It finds the session the cookie names: in this process, or in
    /// memcached when another instance held it (takeover); a session whose
    /// node is down gets a new id on a live node (relocation). A missing,
    /// malformed or unknown id extracts an empty `Session` (no session until
    /// the handler inserts something). It never rejects for anything a
    /// client sends; it rejects only when used outside
    /// [`wrap`](Self::wrap) (500) or when memcached cannot answer during a
    /// takeover (503 with `Retry-After`), both turned into responses by `wrap`.
    pub fn session(
        &self,
    ) -> impl Filter<Extract = (Session,), Error = Rejection> + Clone + Send + Sync + 'static + use<> {
        let requests = self.requests.clone();
        warp::any().and_then(move || {
            let context = requests.current();
            async move {
                let context = context.ok_or_else(|| reject(Error::MissingLayer))?;
                open_session(context).await.map_err(reject)
            }
        })
    }

    /// Wraps `routes` so their sessions are finished: after the handler,
    /// the session is backed up (only if it changed; see the crate docs)
    /// and `Set-Cookie` is added when the id is new or changed, or removed
    /// after [`Session::invalidate`]. Apply it once, around all routes.
    ///
    /// Requests whose path matches `requestUriIgnorePattern` never touch
    /// memcached. In sticky mode their handlers still see a session held in
    /// this process, but nothing is loaded, relocated or backed up; in
    /// non-sticky mode they see no session, and one they create is
    /// discarded (never stored, no cookie).
    ///
    /// Rejections of `routes` pass through unchanged (a session changed by
    /// a rejected request is still backed up).
    pub fn wrap<F, R>(
        &self,
        routes: F,
    ) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static + use<F, R>
    where
        F: Filter<Extract = (R,), Error = Rejection> + Clone + Send + Sync + 'static,
        R: Reply,
    {
        let manager = self.inner.clone();
        let requests = self.requests.clone();
        let begin = warp::method()
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and_then(move |method: Method, path: FullPath, headers: HeaderMap| {
                let manager = manager.clone();
                let requests = requests.clone();
                async move {
                    let context = request_context(&manager, method.as_str(), path.as_str(), &headers);
                    RequestGuard::begin(&requests, context).map_err(reject)
                }
            });
        let finish_manager = self.inner.clone();
        begin
            .and(routes)
            .and_then(move |guard: RequestGuard, reply: R| {
                let manager = finish_manager.clone();
                async move { Ok::<_, Rejection>(finish(&manager, guard, reply.into_response()).await) }
            })
            .or_else(|rejection: Rejection| async move {
                match rejection.find::<SessionRejection>() {
                    Some(session_rejection) => Ok((session_rejection.to_response(),)),
                    None => Err(rejection),
                }
            })
    }
}
