//! One virtual user: its own cookie jar, session and expectation.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cookie_jar::SessionJar;
use crate::counter_reply::CounterReply;
use crate::error::Error;
use crate::expectation::{Check, Expectation};
use crate::failure::Failure;
use crate::session_id::{node_part, random_part};
use crate::tally::Tally;
use crate::targets::{TargetMode, TargetPicker};
use crate::token_ledger::{TokenCheck, TokenLedger, TokenOutcome};

/// Requests remembered per user for anomaly reports.
const HISTORY_LEN: usize = 10;
/// Anomaly reports kept per user (the counts are always complete).
const MAX_ANOMALIES: usize = 5;
/// A hang-up comes at a random moment within `delay_ms` plus this much.
const HANG_UP_SLACK_MS: u64 = 5;

/// What a user needs to know about the run.
#[derive(Debug, Clone)]
pub(crate) struct UserPlan {
    pub(crate) targets: Arc<[String]>,
    pub(crate) mode: TargetMode,
    pub(crate) write_ratio: f64,
    /// Users `0..readers` only read once they have a session.
    pub(crate) readers: usize,
    pub(crate) delay_ms: u64,
    pub(crate) timeout: Duration,
    /// Share of load requests the client hangs up on at a random moment.
    pub(crate) hangup_ratio: f64,
    /// Readers pause this long before each read once they have a session.
    pub(crate) reader_idle: Duration,
    pub(crate) seed: u64,
    /// When the run started (history timestamps are relative to it).
    pub(crate) started: Instant,
}

/// A sequential client: one request at a time, so the expected range of its
/// session is never disturbed by a request of its own in flight (except a
/// timed-out one, which the expectation allows for).
#[derive(Debug)]
pub(crate) struct VirtualUser {
    index: usize,
    client: reqwest::Client,
    picker: TargetPicker,
    expectation: Expectation,
    ledger: TokenLedger,
    rng: fastrand::Rng,
    write_ratio: f64,
    delay_ms: u64,
    hangup_ratio: f64,
    /// Zero for writers.
    idle: Duration,
    started: Instant,
    tally: Tally,
    /// Full id and instance of the last reply for the current session.
    last_id: Option<String>,
    last_instance: Option<String>,
    moved: bool,
    relocated: bool,
    /// A read-back of the session failed (counted once per user).
    unverified: bool,
    history: VecDeque<String>,
    anomalies: Vec<String>,
}

impl VirtualUser {
    /// User number `index` (0-based) with a fresh cookie jar.
    pub(crate) fn new(index: usize, plan: &UserPlan) -> Result<VirtualUser, Error> {
        let client = reqwest::Client::builder()
            .cookie_provider(Arc::new(SessionJar::new()))
            .no_proxy()
            .timeout(plan.timeout)
            .build()
            .map_err(Error::Client)?;
        Ok(VirtualUser {
            index,
            client,
            picker: TargetPicker::new(Arc::clone(&plan.targets), plan.mode, index),
            expectation: Expectation::new(),
            ledger: TokenLedger::new(index),
            rng: fastrand::Rng::with_seed(plan.seed.wrapping_add(index as u64)),
            write_ratio: if index < plan.readers { 0.0 } else { plan.write_ratio },
            delay_ms: plan.delay_ms,
            hangup_ratio: plan.hangup_ratio,
            idle: if index < plan.readers {
                plan.reader_idle
            } else {
                Duration::ZERO
            },
            started: plan.started,
            tally: Tally::default(),
            last_id: None,
            last_instance: None,
            moved: false,
            relocated: false,
            unverified: false,
            history: VecDeque::with_capacity(HISTORY_LEN),
            anomalies: Vec::new(),
        })
    }

    /// Sends one request: a write while the user has no session, else a
    /// write with probability `write_ratio` (0 for a reader), else a read
    /// (a reader idles first). Every write carries the next token; with
    /// probability `hangup_ratio` the user hangs up before the answer.
    pub(crate) async fn step(&mut self) {
        let write = self.expectation.session().is_none() || self.rng.f64() < self.write_ratio;
        if !write && !self.idle.is_zero() {
            tokio::time::sleep(self.idle).await;
        }
        let hang_up = self.rng.f64() < self.hangup_ratio;
        let (target, latency, result) = self.send(write, hang_up).await;
        match result {
            Ok(reply) => self.answered(write, target, latency, &reply),
            Err(failure) => {
                if write {
                    self.expectation.write_failed(failure.write_effect());
                    self.ledger.record(failure.token_outcome());
                }
                self.failed(write, target, latency, failure);
            }
        }
    }

    /// Reads the session back once the load is over; retries transport
    /// failures only (`attempts` tries, `pause` apart). A session that
    /// still cannot be read is counted as unverified.
    pub(crate) async fn verify(&mut self, attempts: u32, pause: Duration) {
        if self.expectation.session().is_none() {
            return;
        }
        self.tally.sessions += 1;
        self.read_back(attempts, pause, "final read-back").await;
    }

    /// Reads the session once more through the next target: in sticky
    /// mode another instance has to take it over from memcached, so this
    /// checks the backup rather than the primary copy. Does not count as
    /// a move of the session.
    pub(crate) async fn verify_handoff(&mut self, attempts: u32, pause: Duration) {
        if self.expectation.session().is_none() {
            return;
        }
        let (moved, relocated) = (self.moved, self.relocated);
        self.picker.advance();
        self.read_back(attempts, pause, "hand-off read-back").await;
        (self.moved, self.relocated) = (moved, relocated);
    }

    async fn read_back(&mut self, attempts: u32, pause: Duration, what: &str) {
        for attempt in 1..=attempts {
            let (target, latency, result) = self.send(false, false).await;
            match result {
                Ok(reply) => {
                    self.answered(false, target, latency, &reply);
                    return;
                }
                Err(failure) => {
                    self.failed(false, target, latency, failure);
                    if !failure.is_transport() || attempt == attempts {
                        self.unverified = true;
                        self.anomaly(format!("{what} failed: {failure}"));
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// The user's counts, and its anomaly reports.
    pub(crate) fn finish(mut self) -> (Tally, Vec<String>) {
        self.tally.moved = u64::from(self.moved);
        self.tally.relocated = u64::from(self.relocated);
        self.tally.unverified = u64::from(self.unverified);
        (self.tally, self.anomalies)
    }

    /// Sends a read, or a write with the ledger's next token. With
    /// `hang_up`, drops the request (closing its connection) at a random
    /// moment within the time the server needs for it.
    async fn send(&mut self, write: bool, hang_up: bool) -> (usize, Duration, Result<CounterReply, Failure>) {
        let (target, base) = self.picker.pick();
        let request = if !write {
            self.client.get(format!("{base}/counter"))
        } else if self.delay_ms > 0 {
            self.client.post(format!(
                "{base}/counter?token={}&delay_ms={}",
                self.ledger.next_token(),
                self.delay_ms
            ))
        } else {
            self.client
                .post(format!("{base}/counter?token={}", self.ledger.next_token()))
        };
        let hang_up_after = hang_up.then(|| {
            let within = (self.delay_ms + HANG_UP_SLACK_MS) * 1000;
            Duration::from_micros(self.rng.u64(0..=within))
        });
        let started = Instant::now();
        let exchange = async {
            match request.send().await {
                Err(error) => Err(Failure::from_reqwest(&error)),
                Ok(response) if !response.status().is_success() => {
                    let status = response.status().as_u16();
                    // Read the body so the connection can be reused.
                    let _ = response.bytes().await;
                    Err(Failure::Status(status))
                }
                Ok(response) => response
                    .json::<CounterReply>()
                    .await
                    .map_err(|error| Failure::from_reqwest(&error)),
            }
        };
        let result = match hang_up_after {
            // Dropping the future closes the connection: the server sees
            // the client hang up mid-request.
            Some(after) => tokio::time::timeout(after, exchange)
                .await
                .unwrap_or(Err(Failure::HangUp)),
            None => exchange.await,
        };
        (target, started.elapsed(), result)
    }

    fn answered(&mut self, write: bool, target: usize, latency: Duration, reply: &CounterReply) {
        let expected = self.expectation.range();
        let id = reply.session_id.as_deref();
        if self.expectation.session() != id.map(random_part) {
            // A new session (or none): the old one's tokens no longer count.
            self.ledger.new_session();
        }
        if write {
            self.ledger.record(TokenOutcome::Acknowledged);
        }
        let check = if write {
            self.expectation.write_succeeded(id, reply.count)
        } else {
            self.expectation.read_succeeded(id, reply.count)
        };
        let tokens = if id.is_some() {
            self.ledger.observe(&reply.tokens)
        } else {
            TokenCheck::default()
        };
        self.tally.ok(latency, check, tokens);
        self.note_instance_and_node(reply);
        self.remember(format!(
            "{} t{target} -> count={} id={} instance={}",
            op(write),
            reply.count,
            id.unwrap_or("null"),
            reply.instance
        ));
        if !check.is_consistent() {
            let (lo, hi) = expected;
            let (lo, hi) = if write { (lo + 1, hi + 1) } else { (lo, hi) };
            self.anomaly(format!(
                "{}: expected count in [{lo}, {hi}], got {} ({})",
                op(write),
                reply.count,
                describe(check)
            ));
        }
        if !tokens.is_consistent() {
            self.anomaly(format!(
                "{}: token list of {} tokens: {} acknowledged missing, {} phantom (answered 503/409), {} never sent",
                op(write),
                reply.tokens.len(),
                tokens.lost,
                tokens.phantom,
                tokens.foreign
            ));
        }
    }

    fn failed(&mut self, write: bool, target: usize, latency: Duration, failure: Failure) {
        if failure.is_refused() {
            self.picker.refused(target);
        }
        self.tally.failed(latency, failure);
        self.remember(format!("{} t{target} -> {failure}", op(write)));
    }

    fn note_instance_and_node(&mut self, reply: &CounterReply) {
        let Some(id) = reply.session_id.as_deref() else {
            self.last_id = None;
            self.last_instance = None;
            return;
        };
        if let Some(last) = self.last_id.as_deref() {
            if random_part(last) == random_part(id) {
                self.relocated |= node_part(last) != node_part(id);
                self.moved |= self.last_instance.as_deref() != Some(reply.instance.as_str());
            }
        }
        self.last_id = Some(id.to_owned());
        self.last_instance = Some(reply.instance.clone());
    }

    fn remember(&mut self, event: String) {
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        let at = self.started.elapsed().as_millis();
        self.history.push_back(format!("{at}ms {event}"));
    }

    fn anomaly(&mut self, what: String) {
        if self.anomalies.len() >= MAX_ANOMALIES {
            return;
        }
        let mut report = format!(
            "user {} at {}ms: {what}; recent requests:",
            self.index,
            self.started.elapsed().as_millis()
        );
        for event in &self.history {
            let _ = write!(report, "\n    {event}");
        }
        self.anomalies.push(report);
    }
}

fn op(write: bool) -> &'static str {
    if write { "POST" } else { "GET" }
}

fn describe(check: Check) -> String {
    if check.lost_session {
        "lost session".to_owned()
    } else if check.lost_updates > 0 {
        format!("{} lost updates", check.lost_updates)
    } else {
        format!("{} extra updates", check.extra_updates)
    }
}
