//! Counts kept by one virtual user, merged into the run's summary.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::expectation::Check;
use crate::failure::Failure;
use crate::latency::Latency;
use crate::token_ledger::TokenCheck;

/// What one user (or, merged, the whole run) saw.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Requests sent (including failed ones and the final read-back).
    pub requests: u64,
    /// Requests answered with a counter reply.
    pub ok: u64,
    /// Failed requests by [`Failure`].
    pub errors: BTreeMap<Failure, u64>,
    /// Sessions the server forgot.
    pub lost_sessions: u64,
    /// Increments that disappeared.
    pub lost_updates: u64,
    /// Increments that appeared from nowhere.
    pub extra_updates: u64,
    /// Writes answered `503`/`409` ("nothing saved") whose token was stored.
    pub phantom_writes: u64,
    /// Responses with a 5xx status other than 502/503/504.
    pub server_errors: u64,
    /// The most updates lost by one user (merged: the maximum).
    pub max_lost_per_user: u64,
    /// Sessions still held at the end (read back or not).
    pub sessions: u64,
    /// Sessions whose final read-back failed.
    pub unverified: u64,
    /// Sessions served by more than one instance (taken over).
    pub moved: u64,
    /// Sessions whose memcached node changed (relocated).
    pub relocated: u64,
    /// Latency of every request.
    pub latency: Latency,
}

impl Tally {
    /// Records a request that got a counter reply, the check of its count
    /// and the check of its token list. A loss seen both ways (count
    /// below range, acknowledged tokens missing) is counted once.
    pub fn ok(&mut self, latency: Duration, check: Check, tokens: TokenCheck) {
        self.requests += 1;
        self.ok += 1;
        self.latency.record(latency);
        let lost = check.lost_updates.max(tokens.lost);
        self.lost_updates += lost;
        self.max_lost_per_user = self.max_lost_per_user.max(self.lost_updates);
        self.extra_updates += check.extra_updates.max(tokens.foreign);
        self.phantom_writes += tokens.phantom;
        self.lost_sessions += u64::from(check.lost_session);
    }

    /// Records a failed request.
    pub fn failed(&mut self, latency: Duration, failure: Failure) {
        self.requests += 1;
        self.latency.record(latency);
        self.server_errors += u64::from(failure.is_server_error());
        *self.errors.entry(failure).or_default() += 1;
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.ok += other.ok;
        for (failure, n) in &other.errors {
            *self.errors.entry(*failure).or_default() += n;
        }
        self.lost_sessions += other.lost_sessions;
        self.lost_updates += other.lost_updates;
        self.extra_updates += other.extra_updates;
        self.phantom_writes += other.phantom_writes;
        self.server_errors += other.server_errors;
        self.max_lost_per_user = self.max_lost_per_user.max(other.max_lost_per_user);
        self.sessions += other.sessions;
        self.unverified += other.unverified;
        self.moved += other.moved;
        self.relocated += other.relocated;
        self.latency.merge(&other.latency);
    }
}
