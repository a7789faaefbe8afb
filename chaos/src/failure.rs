//! Why a request did not produce a counter reply.

use std::fmt;

use crate::expectation::WriteEffect;
use crate::token_ledger::TokenOutcome;

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
    /// The client hung up on purpose before the answer (hang-up mode).
    HangUp,
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
    ///
    /// `503` and `409` promise that nothing was saved, so they are
    /// [`WriteEffect::NotApplied`] (a count that rises anyway is an extra
    /// update, and the write's token a phantom write). `502` and `504` come
    /// from a proxy that gave up on an instance that may still be working
    /// on the request.
    pub fn write_effect(self) -> WriteEffect {
        match self {
            Failure::Refused | Failure::Status(503 | 409) => WriteEffect::NotApplied,
            Failure::Status(502 | 504) => WriteEffect::MaybeLater,
            Failure::Status(_) | Failure::BadBody => WriteEffect::MaybeApplied,
            Failure::Timeout | Failure::Transport | Failure::HangUp => WriteEffect::MaybeLater,
        }
    }

    /// What this failure says about the token of the write it ended.
    pub fn token_outcome(self) -> TokenOutcome {
        match self {
            Failure::Refused => TokenOutcome::NotSent,
            Failure::Status(503 | 409) => TokenOutcome::Refused,
            _ => match self.write_effect() {
                WriteEffect::MaybeLater => TokenOutcome::InFlight,
                _ => TokenOutcome::Settled,
            },
        }
    }

    /// `true` for a `5xx` other than `502`/`503`/`504`: the server failed
    /// (a scenario fails on it unless it declares such errors).
    pub fn is_server_error(self) -> bool {
        matches!(self, Failure::Status(code) if (500..600).contains(&code) && !matches!(code, 502..=504))
    }

    /// `true` for failures below HTTP (no response at all); a hang-up of
    /// our own is not one.
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
            Failure::HangUp => f.write_str("hangup"),
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
        assert_eq!(Failure::Status(503).write_effect(), WriteEffect::NotApplied);
        assert_eq!(Failure::Status(503).token_outcome(), TokenOutcome::Refused);
        assert_eq!(Failure::Status(409).token_outcome(), TokenOutcome::Refused);
        assert_eq!(Failure::Status(500).write_effect(), WriteEffect::MaybeApplied);
        assert_eq!(Failure::Status(500).token_outcome(), TokenOutcome::Settled);
        assert_eq!(Failure::Status(504).token_outcome(), TokenOutcome::InFlight);
        assert_eq!(Failure::HangUp.token_outcome(), TokenOutcome::InFlight);
        assert_eq!(Failure::Refused.token_outcome(), TokenOutcome::NotSent);
        assert!(Failure::Status(500).is_server_error());
        assert!(!Failure::Status(503).is_server_error());
        assert!(!Failure::Status(400).is_server_error());
        assert_eq!(Failure::Timeout.write_effect(), WriteEffect::MaybeLater);
        assert!(Failure::Transport.is_transport());
        assert!(!Failure::Status(500).is_transport());
    }
}
