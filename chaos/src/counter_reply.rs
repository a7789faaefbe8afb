//! The demo app's counter JSON.

use serde::Deserialize;

/// Body of `GET /counter` and `POST /counter`:
/// `{"count":N,"session_id":"<id or null>","instance":"<route>","tokens":[..]}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CounterReply {
    /// The session's counter after the request.
    pub count: u64,
    /// The session id, `None` when the request has no session.
    pub session_id: Option<String>,
    /// The instance (route) that served the request.
    pub instance: String,
    /// The session's most recent write tokens, oldest first (required: a
    /// reply without them is a bad body).
    pub tokens: Vec<String>,
}
