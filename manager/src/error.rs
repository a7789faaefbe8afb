//! Error types: one enum for the crate, one for configuration, one for the
//! memcached boundary. Callers ask the error what it means
//! ([`BackendError::is_unavailable`], [`Error::is_usage_error`], …) instead
//! of matching variants.

use std::time::Duration;

/// A configuration value that could not be accepted.
///
/// The message always names the setting (with its MSM spelling, e.g.
/// `memcachedNodes`) and quotes the offending text, so it can be shown to an
/// operator as is: `memcachedNodes: "n1:host" is not id:host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    setting: &'static str,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(setting: &'static str, message: impl Into<String>) -> Self {
        Self {
            setting,
            message: message.into(),
        }
    }

    /// The setting that was rejected, spelled as in MSM (`memcachedNodes`).
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

/// A failed operation against one memcached node (or the in-process store).
///
/// A miss is never an error: reads return `Ok(None)`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The operation did not finish within `operationTimeout`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The node could not be reached (connection refused or reset, I/O error).
    #[error("node unreachable: {0}")]
    Unreachable(String),
    /// The request was sent but the connection failed before the answer:
    /// it may or may not have been carried out.
    #[error("no answer after the request was sent: {0}")]
    Ambiguous(String),
    /// The node answered `SERVER_ERROR` (for example out of memory).
    #[error("server error: {0}")]
    Server(String),
    /// The node's answer could not be understood, or the request was rejected
    /// as malformed. Indicates a bug or a foreign server on that port.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl BackendError {
    /// The operation timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
    }

    /// The node should be considered down: timeouts and transport failures.
    /// A `SERVER_ERROR` is not: the node answers, it just refused this write.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Unreachable(_) | Self::Ambiguous(_))
    }

    /// A write that failed like this may still have been carried out (it
    /// timed out, or the connection broke after it was sent).
    pub fn may_have_been_applied(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Ambiguous(_))
    }
}

/// Errors returned by the session manager and by [`Session`](crate::Session)
/// accessors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A memcached operation failed.
    #[error("memcached node {node}: {source}")]
    Backend {
        /// The node's id (or its address when the node has no id).
        node: String,
        /// What went wrong.
        #[source]
        source: BackendError,
    },
    /// An attribute value could not be serialized.
    #[error("session attribute {key:?} could not be serialized: {source}")]
    Encode {
        /// The attribute name.
        key: String,
        /// The serializer's error.
        #[source]
        source: postcard::Error,
    },
    /// A stored attribute value could not be read as the requested type.
    #[error("session attribute {key:?} could not be deserialized as the requested type: {source}")]
    Decode {
        /// The attribute name.
        key: String,
        /// The deserializer's error.
        #[source]
        source: postcard::Error,
    },
    /// An `insert` would make the serialized session larger than
    /// `maxSessionSize`; the session is unchanged.
    #[error("session attribute {key:?} would make the session {size} bytes, over the {limit}-byte limit")]
    SessionTooLarge {
        /// The attribute name.
        key: String,
        /// The serialized size the session would have had.
        size: usize,
        /// `maxSessionSize`.
        limit: usize,
    },
    /// [`ReplicatedStore`](crate::replicated::ReplicatedStore): a document
    /// id that cannot be stored (see the module docs for valid ids).
    #[error("a document id must be 1 to 128 printable ASCII characters without spaces (this one has {len} bytes)")]
    InvalidDocumentId {
        /// The id's length in bytes.
        len: usize,
    },
    /// [`ReplicatedStore`](crate::replicated::ReplicatedStore): a document
    /// body larger than `maxSessionSize`; nothing was stored.
    #[error("a document of {size} bytes is over the {limit}-byte limit (maxSessionSize)")]
    DocumentTooLarge {
        /// The body's size.
        size: usize,
        /// `maxSessionSize`.
        limit: usize,
    },
    /// The session is held by another instance that is taking it over right
    /// now; the request can be retried. Mapped to `503 Service Unavailable`.
    #[error("the session is being taken over by another instance; retry the request")]
    TakeoverInProgress,
    /// Non-sticky mode: the session's lock could not be had within
    /// `operationTimeout` and `lockFailure` is `fail`. Mapped to `503`.
    #[error("the session is locked by a concurrent request; retry the request")]
    LockUnavailable,
    /// Non-sticky mode: another request changed the session after this
    /// one read it, so this request's change — based on older data — was
    /// refused and nothing of it saved. Mapped to `503` with `Retry-After`.
    #[error("the session was changed by a concurrent request; nothing was saved, retry the request")]
    Conflict,
    /// Non-sticky mode: memcached did not confirm the write of the
    /// request's change in time (a timeout, or a connection that broke
    /// after the write was sent): the change may or may not have been
    /// saved. Mapped to `504 Gateway Timeout` — never to `503`, which
    /// promises that nothing was saved.
    #[error(
        "memcached node {node} did not confirm the session write ({source}); the change may or may not have been saved"
    )]
    OutcomeUnknown {
        /// The node's id.
        node: String,
        /// What went wrong.
        #[source]
        source: BackendError,
    },
    /// Non-sticky mode: the session's lock expired during the request (it
    /// could not be renewed), so its changes were not saved. Mapped to `503`.
    #[error("the session lock was lost during the request; its changes were not saved")]
    LockLost,
    /// A session was asked for (warp's `session()` filter, the axum
    /// `Session` extractor) in a route outside the session layer (warp's
    /// `wrap()`, tower's `SessionLayer`).
    #[error(
        "the session was asked for outside the session layer: wrap the routes with \
         `manager.wrap(routes)` (warp) or add `manager.layer()` (tower / axum), once, around all routes"
    )]
    MissingLayer,
    /// The session was used after its request finished (answered, or
    /// dropped): a [`Session`](crate::Session) or `SessionHandle` kept past
    /// the request (moved into a background task, say) can still be read,
    /// but nothing it would change could be stored any more.
    #[error(
        "the session was used after its request finished; do session work inside the handler \
         (a handle kept past the request can only read)"
    )]
    RequestFinished,
    /// [`Session::set_max_inactive_interval`](crate::Session::set_max_inactive_interval)
    /// in non-sticky mode, where a session's copies in memcached expire by
    /// the configured `maxInactiveInterval`.
    #[error("a session's own inactivity interval is supported in sticky mode only")]
    PerSessionIntervalNeedsStickyMode,
    /// Two requests ran concurrently inside one task (for example
    /// `tokio::join!` over two `warp::test` requests); the layer cannot tell
    /// their sessions apart. Spawn each request on its own task.
    #[error(
        "two requests are running concurrently in one task; the session layer needs one \
         request per task (spawn concurrent test requests with tokio::spawn)"
    )]
    ConcurrentRequestsInOneTask,
}

impl Error {
    /// The error was caused by the request, not by the server: the client may
    /// retry or start over; never a reason for a 5xx other than 503.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::TakeoverInProgress | Self::LockUnavailable | Self::LockLost | Self::Conflict
        )
    }

    /// The error is a programming mistake in the application (wrong type
    /// requested, value that cannot be serialized, missing layer).
    pub fn is_usage_error(&self) -> bool {
        matches!(
            self,
            Self::Encode { .. }
                | Self::Decode { .. }
                | Self::SessionTooLarge { .. }
                | Self::InvalidDocumentId { .. }
                | Self::DocumentTooLarge { .. }
                | Self::MissingLayer
                | Self::RequestFinished
                | Self::PerSessionIntervalNeedsStickyMode
                | Self::ConcurrentRequestsInOneTask
        )
    }

    /// The error comes from memcached being slow or unreachable.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Backend { source, .. } if source.is_unavailable())
    }
}
