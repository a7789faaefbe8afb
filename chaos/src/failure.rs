//! Why a request did not produce a counter reply.

use std::fmt;

use crate::expectation::WriteEffect;

/// A failed request, classified by what it tells about the server's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Failure {
    /// The server answered with this non-2xx status.
    Status(u16),
    /// No connection could be made (refused, or the connect timed out):
    /// the request was never sent.
    Refused,
    /// The request timed out after it was sent.
    Timeout,
    /// Any other transport failure after the connection was made (reset,
    /// closed before the response was complete, …).
    Transport,
    /// A 2xx response whose body is not the counter JSON.
    BadBody,
}

impl Failure {
    /// Classifies a reqwest error (from sending or from reading the body).
    pub fn from_reqwest(error: &reqwest::Error) -> Failure {
        if error.is_connect() {
            Failure::Refused
        } else if error.is_timeout() {
            Failure::Timeout
        } else if error.is_decode() {
            Failure::BadBody
        } else if let Some(status) = error.status() {
            Failure::Status(status.as_u16())
        } else {
            Failure::Transport
        }
    }

    /// What a write that failed like this may have done to the counter.
    pub fn write_effect(self) -> WriteEffect {
        match self {
            Failure::Refused => WriteEffect::NotApplied,
            Failure::Status(_) | Failure::BadBody => WriteEffect::MaybeApplied,
            Failure::Timeout | Failure::Transport => WriteEffect::MaybeLater,
        }
    }

    /// `true` for failures below HTTP (no response at all).
    pub fn is_transport(self) -> bool {
        matches!(self, Failure::Refused | Failure::Timeout | Failure::Transport)
    }

    /// `true` if the target refused the connection (a load balancer would
    /// fail over to another instance).
    pub fn is_refused(self) -> bool {
        self == Failure::Refused
    }
}

/// The key in the summary's `errors={…}` map: the status code, or
/// `refused` / `timeout` / `transport` / `bad-body`.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Status(code) => write!(f, "{code}"),
            Failure::Refused => f.write_str("refused"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Transport => f.write_str("transport"),
            Failure::BadBody => f.write_str("bad-body"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_effects() {
        assert_eq!(Failure::Status(503).to_string(), "503");
        assert_eq!(Failure::Refused.to_string(), "refused");
        assert_eq!(Failure::Refused.write_effect(), WriteEffect::NotApplied);
        assert_eq!(Failure::Status(503).write_effect(), WriteEffect::MaybeApplied);
        assert_eq!(Failure::Timeout.write_effect(), WriteEffect::MaybeLater);
        assert!(Failure::Transport.is_transport());
        assert!(!Failure::Status(500).is_transport());
    }
}
