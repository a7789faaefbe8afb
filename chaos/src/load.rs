//! The load engine: K virtual users, then the read-back of every session.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::Error;
use crate::summary::Summary;
use crate::tally::Tally;
use crate::targets::TargetMode;
use crate::user::{UserPlan, VirtualUser};

/// Timeout of the `GET /health` probe before the run.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URLs (`http://host:port`, see [`parse_targets`](crate::parse_targets)).
    pub targets: Vec<String>,
    /// Virtual users (concurrency).
    pub users: usize,
    /// Stop sending after this long (the requests in flight complete).
    pub duration: Option<Duration>,
    /// Stop after this many requests in total (the final read-back is
    /// not counted against it).
    pub requests: Option<u64>,
    /// Share of writes (`POST /counter`) among the requests, 0.0..=1.0.
    pub write_ratio: f64,
    /// The first `readers` users only read once they have a session (an
    /// idle session in sticky mode is never backed up again, so faults
    /// that lose memcached data hit it hardest).
    pub readers: usize,
    /// `delay_ms` of every write (the server holds the session that long).
    pub delay_ms: u64,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Share of load requests (not read-backs) on which the client hangs
    /// up — closes the connection — at a random moment within `delay_ms`
    /// + 5 ms, before the answer; 0.0..=1.0.
    pub hangup_ratio: f64,
    /// Readers pause this long before each read (so their sessions sit
    /// idle across a fault).
    pub reader_idle: Duration,
    /// How users spread over several targets.
    pub mode: TargetMode,
    /// Seed of the users' read/write choices.
    pub seed: u64,
    /// Tries of the final read-back of a session (transport errors only).
    pub verify_attempts: u32,
    /// Pause between two tries of the final read-back.
    pub verify_pause: Duration,
    /// After the read-back, wait this long, then read every session once
    /// more through the *next* target; see [`LoadConfig::handoff`].
    pub handoff_after: Option<Duration>,
}

impl LoadConfig {
    /// A configuration with the defaults of `load-verify`: 32 users, 10 s,
    /// half writes, no delay, 5 s timeout, sticky users, 8 read-back tries
    /// 500 ms apart.
    pub fn new(targets: Vec<String>) -> LoadConfig {
        LoadConfig {
            targets,
            users: 32,
            duration: Some(Duration::from_secs(10)),
            requests: None,
            write_ratio: 0.5,
            readers: 0,
            delay_ms: 0,
            timeout: Duration::from_secs(5),
            hangup_ratio: 0.0,
            reader_idle: Duration::ZERO,
            mode: TargetMode::Sticky,
            seed: 0x5e55_1015,
            verify_attempts: 8,
            verify_pause: Duration::from_millis(500),
            handoff_after: None,
        }
    }

    /// Enables the hand-off read-back: once every session was read back
    /// through its user's own target, wait `pause` (so that asynchronous
    /// backups of the last writes have drained — this is not the crash
    /// window, nothing crashes here) and read every session again through
    /// the next target. In sticky mode that instance does not hold the
    /// session and must take it over from memcached, so the check covers
    /// the memcached copy, not just the in-memory primary.
    pub fn handoff(mut self, pause: Duration) -> LoadConfig {
        self.handoff_after = Some(pause);
        self
    }

    fn validate(&self) -> Result<(), Error> {
        let invalid = |what: &str| Err(Error::InvalidOptions(what.to_owned()));
        if self.targets.is_empty() {
            return invalid("at least one target is needed");
        }
        if self.users == 0 {
            return invalid("--users must be at least 1");
        }
        if self.readers > self.users {
            return invalid("--readers cannot exceed --users");
        }
        if !(0.0..=1.0).contains(&self.write_ratio) {
            return invalid("--write-ratio must be between 0.0 and 1.0");
        }
        if !(0.0..=1.0).contains(&self.hangup_ratio) {
            return invalid("--hangup-ratio must be between 0.0 and 1.0");
        }
        if self.duration.is_none() && self.requests.is_none() {
            return invalid("give --duration or --requests");
        }
        if self.requests == Some(0) || self.duration == Some(Duration::ZERO) {
            return invalid("--duration and --requests must be positive");
        }
        if self.timeout.is_zero() || self.verify_attempts == 0 {
            return invalid("--timeout-ms and the read-back tries must be positive");
        }
        Ok(())
    }
}

/// The outcome of [`run_load`].
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The counts.
    pub summary: Summary,
    /// Details of every inconsistency (at most a few per user), with the
    /// user's recent requests.
    pub anomalies: Vec<String>,
    /// Remarks about the run, e.g. targets that were down at the start.
    pub notes: Vec<String>,
}

/// When the users stop.
#[derive(Debug)]
struct Budget {
    deadline: Option<Instant>,
    remaining: Option<AtomicU64>,
}

impl Budget {
    /// `true` if one more request may be sent (and counts it).
    fn take(&self) -> bool {
        if self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return false;
        }
        self.remaining.as_ref().is_none_or(|remaining| {
            remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        })
    }
}

/// Runs the load, then reads every session back, and summarizes.
///
/// # Errors
///
/// Invalid options, a client that cannot be built, or no target answering
/// `GET /health` at the start ([`Error::NoTargetReachable`]).
pub async fn run_load(config: &LoadConfig) -> Result<LoadReport, Error> {
    config.validate()?;
    let notes = probe_targets(&config.targets).await?;
    let started = Instant::now();
    let plan = UserPlan {
        targets: config.targets.iter().cloned().collect(),
        mode: config.mode,
        write_ratio: config.write_ratio,
        readers: config.readers,
        delay_ms: config.delay_ms,
        timeout: config.timeout,
        hangup_ratio: config.hangup_ratio,
        reader_idle: config.reader_idle,
        seed: config.seed,
        started,
    };
    let users = (0..config.users)
        .map(|index| VirtualUser::new(index, &plan))
        .collect::<Result<Vec<_>, _>>()?;
    let budget = Arc::new(Budget {
        deadline: config.duration.map(|duration| started + duration),
        remaining: config.requests.map(AtomicU64::new),
    });

    let users = in_parallel(users, |mut user| {
        let budget = Arc::clone(&budget);
        async move {
            while budget.take() {
                user.step().await;
            }
            user
        }
    })
    .await;
    let (attempts, pause) = (config.verify_attempts, config.verify_pause);
    let mut users = in_parallel(users, |mut user| async move {
        user.verify(attempts, pause).await;
        user
    })
    .await;
    if let Some(settle) = config.handoff_after {
        tokio::time::sleep(settle).await;
        users = in_parallel(users, |mut user| async move {
            user.verify_handoff(attempts, pause).await;
            user
        })
        .await;
    }

    let mut tally = Tally::default();
    let mut anomalies = Vec::new();
    for user in users {
        let (user_tally, user_anomalies) = user.finish();
        tally.merge(&user_tally);
        anomalies.extend(user_anomalies);
    }
    Ok(LoadReport {
        summary: Summary::from_tally(&tally),
        anomalies,
        notes,
    })
}

/// Runs `work` for every user as its own task; returns the users in their
/// original order.
async fn in_parallel<F, Fut>(users: Vec<VirtualUser>, work: F) -> Vec<VirtualUser>
where
    F: Fn(VirtualUser) -> Fut,
    Fut: Future<Output = VirtualUser> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    for (index, user) in users.into_iter().enumerate() {
        let task = work(user);
        tasks.spawn(async move { (index, task.await) });
    }
    let mut done = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(pair) => done.push(pair),
            // A panicking user is a bug in this tool: surface it.
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
    done.sort_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, user)| user).collect()
}

/// Checks `GET /health` on every target. Returns a note per unreachable
/// target; fails if none is reachable.
async fn probe_targets(targets: &[String]) -> Result<Vec<String>, Error> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(Error::Client)?;
    let mut notes = Vec::new();
    for target in targets {
        match client.get(format!("{target}/health")).send().await {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => notes.push(format!("{target}/health answered {} at the start", response.status())),
            Err(error) => notes.push(format!("{target}/health failed at the start: {error}")),
        }
    }
    if notes.len() == targets.len() {
        return Err(Error::NoTargetReachable {
            targets: targets.join(","),
        });
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_budget_is_exact() {
        let budget = Budget {
            deadline: None,
            remaining: Some(AtomicU64::new(3)),
        };
        assert_eq!((0..10).filter(|_| budget.take()).count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn time_budget_ends() {
        let budget = Budget {
            deadline: Some(Instant::now() + Duration::from_secs(1)),
            remaining: None,
        };
        assert!(budget.take());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!budget.take());
    }

    #[test]
    fn validation_names_the_option() {
        let mut config = LoadConfig::new(vec!["http://127.0.0.1:1".to_owned()]);
        assert!(config.validate().is_ok());
        config.write_ratio = 1.5;
        let error = config.validate().unwrap_err();
        assert!(error.is_usage());
        assert!(error.to_string().contains("--write-ratio"), "{error}");
    }
}
