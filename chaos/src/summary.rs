//! The one-line result of a load run.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::tally::Tally;

/// What a run may lose or show and still pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tolerance {
    /// Acknowledged updates one user may lose (the async-backup window).
    pub lost_updates_per_user: u64,
    /// Server errors (`500`) are expected by the scenario.
    pub server_errors: bool,
}

impl Tolerance {
    /// Nothing lost, no server error.
    pub const NONE: Tolerance = Tolerance {
        lost_updates_per_user: 0,
        server_errors: false,
    };
}

/// The result of a load run, printed as one `key=value` line (its
/// [`Display`](fmt::Display)) or as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Sessions held by the users at the end (each one read back).
    pub sessions: u64,
    /// Requests sent, including the final read-back.
    pub requests: u64,
    /// Requests answered with a counter reply.
    pub ok: u64,
    /// Failed requests by status code or `refused`/`timeout`/`transport`/`bad-body`.
    pub errors: BTreeMap<String, u64>,
    /// Sessions the server forgot (a response carried another session or none).
    pub lost_sessions: u64,
    /// Increments that disappeared (count below the expected range).
    pub lost_updates: u64,
    /// Increments nobody sent (count above the expected range, or a token
    /// that was never sent).
    pub extra_updates: u64,
    /// Writes answered `503`/`409` ("nothing saved") whose token was stored.
    pub phantom_writes: u64,
    /// Responses with a 5xx status other than 502/503/504.
    pub server_errors: u64,
    /// The most updates one user lost.
    pub max_lost_per_user: u64,
    /// Sessions whose final read-back failed, so they are not verified.
    pub unverified: u64,
    /// Sessions that were served by more than one instance.
    pub moved: u64,
    /// Sessions that moved to another memcached node.
    pub relocated: u64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Largest latency, milliseconds.
    pub max_ms: f64,
}

impl Summary {
    /// Summarizes a merged tally.
    pub fn from_tally(tally: &Tally) -> Summary {
        Summary {
            sessions: tally.sessions,
            requests: tally.requests,
            ok: tally.ok,
            errors: tally
                .errors
                .iter()
                .map(|(failure, n)| (failure.to_string(), *n))
                .collect(),
            lost_sessions: tally.lost_sessions,
            lost_updates: tally.lost_updates,
            extra_updates: tally.extra_updates,
            phantom_writes: tally.phantom_writes,
            server_errors: tally.server_errors,
            max_lost_per_user: tally.max_lost_per_user,
            unverified: tally.unverified,
            moved: tally.moved,
            relocated: tally.relocated,
            p50_ms: tally.latency.quantile_ms(0.5),
            p99_ms: tally.latency.quantile_ms(0.99),
            max_ms: tally.latency.max_ms(),
        }
    }

    /// Why the run does not pass with no tolerance at all; empty when it
    /// does.
    pub fn problems(&self) -> Vec<&'static str> {
        self.problems_with(Tolerance::NONE)
    }

    /// Why the run does not pass; empty when it does.
    ///
    /// A run passes when at least one request succeeded, nothing was lost
    /// (beyond `tolerance.lost_updates_per_user` per user), invented or
    /// saved against a "nothing saved" answer, no server error occurred
    /// (unless `tolerance.server_errors`), and every session was read back
    /// at the end.
    pub fn problems_with(&self, tolerance: Tolerance) -> Vec<&'static str> {
        let mut problems = Vec::new();
        if self.ok == 0 {
            problems.push("no request succeeded");
        }
        if self.lost_sessions > 0 {
            problems.push("sessions were lost");
        }
        if self.max_lost_per_user > tolerance.lost_updates_per_user {
            problems.push("updates were lost");
        }
        if self.extra_updates > 0 {
            problems.push("counts rose by more than was sent");
        }
        if self.phantom_writes > 0 {
            problems.push("writes answered 503/409 were saved (phantom writes)");
        }
        if self.server_errors > 0 && !tolerance.server_errors {
            problems.push("the server answered 500");
        }
        if self.unverified > 0 {
            problems.push("sessions could not be read back");
        }
        problems
    }

    /// `true` if [`problems`](Self::problems) is empty.
    pub fn passed(&self) -> bool {
        self.problems().is_empty()
    }

    /// The summary as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a summary always serializes")
    }

    /// `{503:40,transport:5}`.
    pub fn errors_text(&self) -> String {
        let inner = self
            .errors
            .iter()
            .map(|(key, n)| format!("{key}:{n}"))
            .collect::<Vec<_>>()
            .join(",");
        format!("{{{inner}}}")
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sessions={} requests={} ok={} errors={} lost_sessions={} lost_updates={} \
             extra_updates={} phantom_writes={} server_errors={} unverified={} moved={} relocated={} \
             p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
            self.sessions,
            self.requests,
            self.ok,
            self.errors_text(),
            self.lost_sessions,
            self.lost_updates,
            self.extra_updates,
            self.phantom_writes,
            self.server_errors,
            self.unverified,
            self.moved,
            self.relocated,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::expectation::Check;
    use crate::failure::Failure;
    use crate::token_ledger::TokenCheck;

    #[test]
    fn line_format_and_verdict() {
        let mut tally = Tally::default();
        tally.ok(Duration::from_millis(2), Check::default(), TokenCheck::default());
        tally.failed(Duration::from_millis(1), Failure::Status(503));
        tally.failed(Duration::from_millis(1), Failure::Transport);
        tally.sessions = 1;
        let summary = Summary::from_tally(&tally);
        let line = summary.to_string();
        assert!(
            line.starts_with("sessions=1 requests=3 ok=1 errors={503:1,transport:1} lost_sessions=0 lost_updates=0"),
            "{line}"
        );
        assert!(line.contains(" max_ms=2.0"), "{line}");
        assert!(summary.passed());
        assert!(summary.to_json().contains("\"lost_updates\":0"));

        tally.ok(
            Duration::from_millis(1),
            Check {
                lost_updates: 2,
                ..Check::default()
            },
            TokenCheck {
                lost: 1,
                ..TokenCheck::default()
            },
        );
        let summary = Summary::from_tally(&tally);
        assert_eq!(summary.lost_updates, 2, "one loss seen two ways counts once");
        assert_eq!(summary.problems(), vec!["updates were lost"]);
        let tolerant = Tolerance {
            lost_updates_per_user: 2,
            ..Tolerance::NONE
        };
        assert!(summary.problems_with(tolerant).is_empty());
    }

    #[test]
    fn phantom_writes_and_server_errors_fail() {
        let mut tally = Tally::default();
        tally.ok(
            Duration::from_millis(1),
            Check::default(),
            TokenCheck {
                phantom: 1,
                ..TokenCheck::default()
            },
        );
        tally.failed(Duration::from_millis(1), Failure::Status(500));
        let summary = Summary::from_tally(&tally);
        let line = summary.to_string();
        assert!(line.contains(" phantom_writes=1 server_errors=1 "), "{line}");
        assert_eq!(summary.problems().len(), 2, "{:?}", summary.problems());
        let declared = Tolerance {
            server_errors: true,
            ..Tolerance::NONE
        };
        assert_eq!(summary.problems_with(declared).len(), 1);
    }

    #[test]
    fn nothing_succeeded_fails() {
        assert!(!Summary::from_tally(&Tally::default()).passed());
    }
}
