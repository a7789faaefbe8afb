//! What a request sees, on the `http` crate's types only (no web
//! framework): its session context ([`context`]), the id it carries in a
//! cookie or header ([`id_transport`]), the [`Session`] handle its handler
//! uses ([`session`]), and — here — the glue both adapters call: a
//! request's context from its method, path and headers, and the response
//! a session error becomes.

pub(crate) mod context;
pub(crate) mod id_transport;
pub(crate) mod session;

use std::sync::Arc;

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::error::Error;
use crate::inner::ManagerInner;
use crate::request::context::{RequestContext, RequestGuard};
use crate::request::session::Session;

/// The session context of a request with this method, path and headers
/// (the id it carries, and whether `requestUriIgnorePattern` matches).
pub(crate) fn request_context(
    manager: &Arc<ManagerInner>,
    method: &str,
    path: &str,
    headers: &HeaderMap,
) -> RequestContext {
    let ignored = manager.config.ignore_pattern.as_ref().is_some_and(|p| p.matches(path));
    let incoming = id_transport::incoming_id(manager, headers);
    RequestContext::new(manager.clone(), incoming, ignored, method, path)
}

/// The request's [`Session`], once the session its id names is found
/// (loaded, relocated or taken over as needed).
pub(crate) async fn open_session(context: Arc<RequestContext>) -> Result<Session, Error> {
    context.resolve().await?;
    Ok(Session::new(context))
}

/// Ends the request after its handler produced `response`: adds
/// `Set-Cookie` as the session needs, or — when the session's changes
/// could not be saved — answers with the error response instead.
pub(crate) async fn finish<B: From<String>>(
    manager: &ManagerInner,
    guard: RequestGuard,
    mut response: http::Response<B>,
) -> http::Response<B> {
    match guard.finish().await {
        Ok(action) => id_transport::apply(manager, action, response.headers_mut()),
        // The handler ran, but its session changes were not saved: say so.
        Err(error) => response = ErrorReply::for_error(&error).into_response(),
    }
    response
}

/// What the client is told when its request's session failed.
pub(crate) struct ErrorReply {
    pub(crate) status: StatusCode,
    pub(crate) body: String,
}

impl ErrorReply {
    /// The status and message for `error` (store details stay in the log),
    /// logged at the level it deserves.
    pub(crate) fn for_error(error: &Error) -> Self {
        let (status, body) = match error {
            Error::TakeoverInProgress | Error::LockUnavailable | Error::LockLost | Error::Conflict => {
                (StatusCode::SERVICE_UNAVAILABLE, error.to_string())
            }
            Error::OutcomeUnknown { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "the session store did not confirm the change in time; it may or may not have been saved".to_owned(),
            ),
            Error::Backend { .. } if error.is_unavailable() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the session store is unavailable; retry the request".to_owned(),
            ),
            Error::Backend { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the session could not be saved".to_owned(),
            ),
            // Programming mistakes: the message says how to fix them.
            _ => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(%error, "session temporarily unavailable");
        } else {
            tracing::error!(%error, "session error");
        }
        Self { status, body }
    }

    /// As an `http` response; a `503` says `Retry-After: 1`.
    pub(crate) fn into_response<B: From<String>>(self) -> http::Response<B> {
        let mut response = http::Response::new(B::from(self.body));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
