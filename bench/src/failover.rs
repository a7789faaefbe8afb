//! Failover cost: kill -9 one of three memcached nodes under steady write
//! load and read the damage off the timeline of every request.
//!
//! * failed requests: every non-2xx answer or transport error of the run;
//! * longest request during the event: the largest latency of the
//!   requests that ended after the kill;
//! * recovery: p99 over a sliding window (500 ms, moved by 50 ms) of the
//!   requests ending in it, compared with the p99 of the 2 s before the
//!   kill; recovery is the end of the last window after the kill whose p99
//!   exceeds 1.5 × that baseline, measured from the kill (0 when none did).

use std::time::Duration;

use memcached_sessions::Config;
use serde::Serialize;

use crate::apps::{Contender, RunningApp};
use crate::error::BenchError;
use crate::load::{self, Event, Sample, Work, Worker, new_histogram};
use crate::servers::ServerProcess;

/// Window of the sliding p99.
const WINDOW: Duration = Duration::from_millis(500);
/// Step of the sliding window.
const STEP: Duration = Duration::from_millis(50);
/// Baseline: the requests that ended this long before the kill.
const BASELINE: Duration = Duration::from_secs(2);
/// A window is "recovered" when its p99 is at most this times the baseline.
const RECOVERED_FACTOR: f64 = 1.5;

/// The failover scenario's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailoverSpec {
    /// Sticky or non-sticky (lock none).
    pub(crate) sticky: bool,
    /// Virtual users.
    pub(crate) concurrency: usize,
    /// Load before the kill.
    pub(crate) before_kill: Duration,
    /// Load after the kill.
    pub(crate) after_kill: Duration,
    /// `operationTimeout` of the manager.
    pub(crate) operation_timeout: Duration,
}

/// What one failover run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FailoverResult {
    /// `sticky` or `non-sticky`.
    pub(crate) mode: &'static str,
    /// All requests of the run.
    pub(crate) requests: u64,
    /// Failed requests, total.
    pub(crate) failed: u64,
    /// Failed requests by cause.
    pub(crate) failures: std::collections::BTreeMap<String, u64>,
    /// p99 of the 2 s before the kill, ms.
    pub(crate) baseline_p99_ms: f64,
    /// p99 of the last 2 s of the run, ms (the level after the failover).
    pub(crate) final_p99_ms: f64,
    /// Longest request before the kill, ms.
    pub(crate) max_before_kill_ms: f64,
    /// Longest request that ended after the kill, ms.
    pub(crate) max_after_kill_ms: f64,
    /// Time from the kill until the sliding p99 stays within 1.5 × the
    /// baseline, ms; `None` if it never did before the run ended.
    pub(crate) recovery_ms: Option<f64>,
    /// The manager's `operationTimeout`, ms.
    pub(crate) operation_timeout_ms: f64,
    /// When the last failed request ended, ms after the kill.
    pub(crate) last_failure_after_kill_ms: Option<f64>,
    /// Sessions relocated to another node (manager statistics).
    pub(crate) relocations: u64,
    /// Backups that failed (manager statistics).
    pub(crate) backups_failed: u64,
}

/// Runs one scenario on three fresh memcached nodes (the killed one is `n1`).
pub(crate) async fn run(spec: FailoverSpec) -> Result<FailoverResult, BenchError> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(ServerProcess::memcached(64).await?);
    }
    let node_list = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| format!("n{}:{}", i + 1, node.addr()))
        .collect::<Vec<_>>()
        .join(",");
    let config = Config::builder()
        .memcached_nodes(node_list)
        .sticky(spec.sticky)
        .session_backup_async(true)
        .locking_mode("none")
        .operation_timeout(spec.operation_timeout)
        .build()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let app = RunningApp::start(&Contender::Ours(Box::new(config))).await?;
    let workers = Worker::http_users(app.addr, Work::Write, spec.concurrency);
    let mut victim = nodes.remove(0);
    let result = load::run(
        workers,
        spec.before_kill + spec.after_kill,
        &[],
        true,
        Some(Event {
            at: spec.before_kill,
            action: Box::new(move || victim.kill()),
        }),
    )
    .await;
    let statistics = app.manager.as_ref().map(|m| m.statistics());
    app.stop().await;
    let kill_at = result.event_at.unwrap_or(spec.before_kill);
    let analysis = analyse(&result.timeline, kill_at);
    Ok(FailoverResult {
        mode: if spec.sticky { "sticky" } else { "non-sticky" },
        requests: result.requests(),
        failed: result.failed(),
        failures: result.failures.clone(),
        baseline_p99_ms: analysis.baseline_p99_ms,
        final_p99_ms: analysis.final_p99_ms,
        max_before_kill_ms: analysis.max_before_ms,
        max_after_kill_ms: analysis.max_after_ms,
        recovery_ms: analysis.recovery_ms,
        last_failure_after_kill_ms: analysis.last_failure_ms,
        operation_timeout_ms: spec.operation_timeout.as_secs_f64() * 1000.0,
        relocations: statistics.as_ref().map_or(0, |s| s.counters.relocations),
        backups_failed: statistics.as_ref().map_or(0, |s| s.counters.backups_failed),
    })
}

struct Analysis {
    baseline_p99_ms: f64,
    final_p99_ms: f64,
    max_before_ms: f64,
    max_after_ms: f64,
    recovery_ms: Option<f64>,
    last_failure_ms: Option<f64>,
}

fn analyse(timeline: &[Sample], kill_at: Duration) -> Analysis {
    let kill_us = micros(kill_at);
    let p99_between = |from_us: u64, to_us: u64| -> Option<u64> {
        // The timeline is sorted by end.
        let first = timeline.partition_point(|s| s.end_us < from_us);
        let last = timeline.partition_point(|s| s.end_us < to_us);
        let mut histogram = new_histogram();
        for sample in &timeline[first..last.max(first)] {
            histogram.saturating_record(sample.latency_us.max(1));
        }
        (!histogram.is_empty()).then(|| histogram.value_at_quantile(0.99))
    };
    let baseline = p99_between(kill_us.saturating_sub(micros(BASELINE)), kill_us).unwrap_or(1);
    let max_of = |before: bool| {
        timeline
            .iter()
            .filter(|s| (s.end_us < kill_us) == before)
            .map(|s| s.latency_us)
            .max()
            .unwrap_or(0)
    };
    let end_us = timeline.last().map_or(kill_us, |s| s.end_us);
    let limit = baseline as f64 * RECOVERED_FACTOR;
    let mut last_bad_end = None;
    let mut window_end = kill_us + micros(STEP);
    // Up to the first window that ends after the last request.
    while window_end < end_us + micros(STEP) {
        let window_start = window_end.saturating_sub(micros(WINDOW));
        if p99_between(window_start, window_end).is_some_and(|p99| p99 as f64 > limit) {
            last_bad_end = Some(window_end);
        }
        window_end += micros(STEP);
    }
    // Still over the limit in the last full window: not recovered.
    let recovered = last_bad_end.is_none_or(|bad| bad + micros(STEP) <= end_us);
    let final_p99 = p99_between(end_us.saturating_sub(micros(BASELINE)), end_us + 1).unwrap_or(0);
    Analysis {
        baseline_p99_ms: ms(baseline),
        final_p99_ms: ms(final_p99),
        max_before_ms: ms(max_of(true)),
        max_after_ms: ms(max_of(false)),
        recovery_ms: recovered.then(|| last_bad_end.map_or(0.0, |bad| ms(bad - kill_us))),
        last_failure_ms: timeline
            .iter()
            .rev()
            .find(|s| !s.ok)
            .map(|s| (s.end_us as f64 - kill_us as f64) / 1000.0),
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 ms requests every 10 ms for 4 s, with `slow` (end ms, latency ms).
    fn timeline(slow: &[(u64, u64)]) -> Vec<Sample> {
        let mut samples: Vec<Sample> = (1..400)
            .map(|i| Sample {
                end_us: i * 10_000,
                latency_us: 1_000,
                ok: true,
            })
            .collect();
        for &(end_ms, latency_ms) in slow {
            samples.push(Sample {
                end_us: end_ms * 1000,
                latency_us: latency_ms * 1000,
                ok: false,
            });
        }
        samples.sort_by_key(|s| s.end_us);
        samples
    }

    #[test]
    fn no_disturbance_means_no_recovery_time() {
        let analysis = analyse(&timeline(&[]), Duration::from_secs(2));
        assert_eq!(analysis.recovery_ms, Some(0.0));
        assert_eq!(analysis.max_after_ms, 1.0);
        assert_eq!(analysis.last_failure_ms, None);
    }

    #[test]
    fn recovery_ends_with_the_last_slow_window() {
        let analysis = analyse(&timeline(&[(2300, 400), (2600, 300)]), Duration::from_secs(2));
        assert_eq!(analysis.max_after_ms, 400.0);
        // The last window holding the 2.6 s request ends at 3.1 s.
        let recovery = analysis.recovery_ms.expect("recovered");
        assert!((1000.0..=1100.0).contains(&recovery), "{recovery}");
        assert_eq!(analysis.last_failure_ms, Some(600.0));
    }

    #[test]
    fn slow_until_the_end_is_not_recovered() {
        let analysis = analyse(&timeline(&[(3990, 500)]), Duration::from_secs(2));
        assert_eq!(analysis.recovery_ms, None);
    }
}
