//! Running one scenario: cluster, load, fault, verdict.

use std::fmt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::app_stats::AppStats;
use crate::error::Error;
use crate::load::{LoadConfig, LoadReport, run_load};
use crate::local_cluster::LocalCluster;
use crate::scenario::{ClusterMode, Effect, Scenario};
use crate::summary::Summary;
use crate::targets::TargetMode;

/// How hard and how long every scenario runs.
#[derive(Debug, Clone)]
pub struct ScenarioSettings {
    /// Virtual users.
    pub users: usize,
    /// Length of the load (the fault is injected inside it).
    pub duration: Duration,
    /// When the fault is injected, from the start of the load.
    pub fault_at: Duration,
    /// How long a frozen memcached node stays stopped.
    pub freeze: Duration,
    /// Client timeout of one request.
    pub timeout: Duration,
    /// Share of writes.
    pub write_ratio: f64,
    /// Users that only read once they have a session.
    pub readers: usize,
    /// Readers pause this long before each read.
    pub reader_idle: Duration,
    /// Sticky mode: pause before the hand-off read-back through the other
    /// instance (see [`LoadConfig::handoff`]).
    pub handoff_after: Duration,
    /// `delay_ms` of the writes.
    pub delay_ms: u64,
    /// The apps' `--operation-timeout-ms`.
    pub operation_timeout_ms: u64,
    /// Seed of the users' read/write choices.
    pub seed: u64,
    /// Where each scenario's instance logs go (`<dir>/<scenario>-<mode>/`).
    pub log_dir: PathBuf,
}

/// PASS or FAIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Ran, injected its fault, saw its effect, and lost nothing.
    Pass,
    /// Lost something, or could not run or inject its fault, or the fault
    /// had no visible effect.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
        })
    }
}

/// How much of an effect was seen (> 0: the fault had it).
fn measure(effect: Effect, summary: &Summary, stats: &[AppStats], partition_seen: bool) -> u64 {
    let sum = |name: &str| stats.iter().map(|s| s.counter(name)).sum::<u64>();
    let errors = |key: &str| summary.errors.get(key).copied().unwrap_or(0);
    match effect {
        Effect::StatsCounter(name) => sum(name),
        Effect::AnyStatsCounter(names) => names.iter().map(|name| sum(name)).sum(),
        Effect::ClientMoved => summary.moved,
        Effect::ClientRelocated => summary.relocated,
        Effect::ClientRefused => errors("refused"),
        Effect::ClientHangUps => errors("hangup"),
        Effect::StatsProbeMaxAtLeast(names, at_least) => {
            let slowest = stats
                .iter()
                .flat_map(|s| names.iter().map(|name| s.probe_max(name)))
                .max()
                .unwrap_or(0);
            if slowest >= at_least { slowest } else { 0 }
        }
        Effect::PartitionSeen => u64::from(partition_seen),
    }
}

/// What happened in one scenario; its [`Display`](fmt::Display) is the
/// scenario's output line.
#[derive(Debug)]
pub struct ScenarioReport {
    /// The scenario.
    pub scenario: Scenario,
    /// The load's outcome, or why the scenario could not run.
    pub load: Result<LoadReport, Error>,
    /// Why the fault could not be injected, if so.
    pub fault_error: Option<Error>,
    /// When the fault was injected, from the start of the load.
    pub fault_at: Option<Duration>,
    /// The instances' log files.
    pub logs: Vec<PathBuf>,
    /// `/stats` of every instance running at the end, or why not.
    pub stats: Result<Vec<AppStats>, String>,
    /// Whether a partition was seen to take effect.
    pub partition_seen: bool,
}

impl ScenarioReport {
    /// A scenario that could not start.
    pub fn not_started(scenario: Scenario, error: Error) -> ScenarioReport {
        ScenarioReport {
            scenario,
            load: Err(error),
            fault_error: None,
            fault_at: None,
            logs: Vec::new(),
            stats: Ok(Vec::new()),
            partition_seen: false,
        }
    }

    /// Every effect the scenario asserts, with how much of it was seen.
    pub fn effects(&self) -> Vec<(Effect, u64)> {
        let (Ok(load), Ok(stats)) = (&self.load, &self.stats) else {
            return Vec::new();
        };
        self.scenario
            .effects
            .iter()
            .map(|&effect| (effect, measure(effect, &load.summary, stats, self.partition_seen)))
            .collect()
    }

    /// The verdict and, unless it passed, why.
    pub fn verdict(&self) -> (Verdict, Vec<String>) {
        let report = match (&self.load, &self.fault_error) {
            (Err(error), _) => return (Verdict::Fail, vec![error.to_string()]),
            (_, Some(error)) => {
                return (Verdict::Fail, vec![format!("fault not injected: {error}")]);
            }
            (Ok(report), None) => report,
        };
        let mut problems: Vec<String> = report
            .summary
            .problems_with(self.scenario.tolerance)
            .into_iter()
            .map(str::to_owned)
            .collect();
        if let Err(error) = &self.stats {
            problems.push(format!("cannot read the instances' statistics: {error}"));
        }
        for (effect, seen) in self.effects() {
            if seen == 0 {
                problems.push(format!("the fault had no effect: expected {effect}"));
            }
        }
        if problems.is_empty() {
            (Verdict::Pass, problems)
        } else {
            (Verdict::Fail, problems)
        }
    }
}

impl fmt::Display for ScenarioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verdict, problems) = self.verdict();
        write!(
            f,
            "scenario={} mode={} result={verdict} backup={}",
            self.scenario.name,
            self.scenario.mode,
            self.scenario.backup_label()
        )?;
        if let Ok(report) = &self.load {
            let s = &report.summary;
            write!(
                f,
                " sessions={} requests={} ok={} errors={} lost_sessions={} lost_updates={} \
                 extra_updates={} phantom_writes={} server_errors={} unverified={} moved={} relocated={} \
                 p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
                s.sessions,
                s.requests,
                s.ok,
                s.errors_text(),
                s.lost_sessions,
                s.lost_updates,
                s.extra_updates,
                s.phantom_writes,
                s.server_errors,
                s.unverified,
                s.moved,
                s.relocated,
                s.p50_ms,
                s.p99_ms,
                s.max_ms
            )?;
        }
        let effects = self
            .effects()
            .iter()
            .map(|(effect, seen)| format!("{effect}:{seen}"))
            .collect::<Vec<_>>()
            .join(",");
        write!(f, " effects={{{effects}}}")?;
        if let Some(at) = self.fault_at {
            write!(f, " fault_at_ms={}", at.as_millis())?;
        }
        if verdict == Verdict::Fail {
            write!(f, " reason={:?}", problems.join("; "))?;
        }
        Ok(())
    }
}

/// Runs `scenario` on a fresh cluster with `binary` as the demo app,
/// driving the load on `runtime`.
pub fn run_scenario(
    scenario: &Scenario,
    settings: &ScenarioSettings,
    binary: &Path,
    runtime: &tokio::runtime::Runtime,
) -> ScenarioReport {
    let log_dir = settings.log_dir.join(format!("{}-{}", scenario.name, scenario.mode));
    // Stale logs of an earlier run would be misleading.
    let _ = std::fs::remove_dir_all(&log_dir);
    let mut cluster = match LocalCluster::start(scenario, binary, &log_dir, settings.operation_timeout_ms) {
        Ok(cluster) => cluster,
        Err(error) => return ScenarioReport::not_started(scenario.clone(), error),
    };
    let config = LoadConfig {
        users: settings.users,
        duration: Some(settings.duration),
        requests: None,
        write_ratio: settings.write_ratio,
        readers: settings.readers,
        reader_idle: settings.reader_idle,
        delay_ms: scenario.delay_ms.unwrap_or(settings.delay_ms),
        hangup_ratio: scenario.hangup_ratio,
        timeout: settings.timeout,
        mode: match scenario.mode {
            ClusterMode::Sticky => TargetMode::Sticky,
            ClusterMode::NonSticky => TargetMode::RoundRobin,
        },
        seed: settings.seed,
        handoff_after: (scenario.mode == ClusterMode::Sticky).then_some(settings.handoff_after),
        ..LoadConfig::new(cluster.targets())
    };
    let logs = cluster.logs();
    let fault = &scenario.fault;
    let (load, injected) = std::thread::scope(|scope| {
        let cluster = &mut cluster;
        let fault_thread = scope.spawn(move || {
            let started = Instant::now();
            sleep(settings.fault_at);
            let at = started.elapsed();
            cluster.inject(fault).map(|()| at)
        });
        let load = runtime.block_on(run_load(&config));
        let injected = fault_thread
            .join()
            .unwrap_or_else(|_| Err(Error::Harness("fault thread panicked".to_owned())));
        (load, injected)
    });
    // What the fault did, read before everything is killed for the next
    // scenario.
    let stats = cluster.stats();
    let partition_seen = cluster.partition_seen();
    drop(cluster);
    let (fault_at, fault_error) = match injected {
        Ok(at) => (Some(at), None),
        Err(error) => (None, Some(error)),
    };
    ScenarioReport {
        scenario: scenario.clone(),
        load,
        fault_error,
        fault_at,
        logs,
        stats,
        partition_seen,
    }
}
